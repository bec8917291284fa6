//! Conditions: what `match` (all must hold) and `exclude` (any excludes) say.
//!
//! Per dotted path: a scalar or a list (any of), or a mapping of operators that must all hold:
//! `not`, `glob`, `regex`, `cidr`, `gte`/`gt`/`lte`/`lt`, `exists`, `contains`, `in_list`,
//! `registry_in`, `registry_not_in`. `any:` and `all:` group conditions. A field with several
//! values (`sourceIPs`, `pod.containers[*].image`) satisfies a positive test when any of its
//! values does; `not` negates the whole test. `registry_not_in` is its own test (some image's
//! registry is outside the list), not `not: registry_in` (no image's registry is inside).
//!
//! Conditions are evaluated cheapest first ([`Cond::cost`]): tests on decoded fields before
//! any test that needs the raw event parsed (request bodies), so a body is parsed only for
//! events whose cheaper conditions already hold.

use std::collections::BTreeMap;
use std::net::IpAddr;

use regex::Regex;
use serde_norway::Value as Yaml;

use crate::field::{EventFacts, FieldPath, Value};

/// Largest compiled regex (bytes) a rule may carry: keeps a hostile or careless pattern from
/// costing memory or start-up time. The `regex` crate matches in linear time.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A literal a field is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// An integer (`403`).
    Int(i64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
}

impl Literal {
    /// Whether a field value equals this literal. Numbers and their decimal text compare equal,
    /// so `"403"` in a rule matches the code 403 and a stringly exporter's `"403"` matches `403`.
    pub fn matches(&self, v: &Value<'_>) -> bool {
        match (self, v) {
            (Literal::Int(a), Value::Int(b)) => a == b,
            (Literal::Str(a), Value::Str(b)) => a == b.as_ref(),
            (Literal::Bool(a), Value::Bool(b)) => a == b,
            (Literal::Int(a), Value::Str(b)) => b.parse::<i64>().ok() == Some(*a),
            (Literal::Str(a), Value::Int(b)) => a.parse::<i64>().ok() == Some(*b),
            _ => false,
        }
    }

    fn parse(v: &Yaml) -> Result<Literal, String> {
        match v {
            Yaml::String(s) => Ok(Literal::Str(s.clone())),
            Yaml::Bool(b) => Ok(Literal::Bool(*b)),
            Yaml::Number(n) => n
                .as_i64()
                .map(Literal::Int)
                .ok_or_else(|| format!("{n} is not an integer")),
            _ => Err("expected a scalar (string, integer, boolean) or a list of scalars".into()),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses CIDR notation or a bare address.
    ///
    /// ```
    /// use authwatch_rules::condition::IpNet;
    /// let net = IpNet::parse("10.0.0.0/8").unwrap();
    /// assert!(net.contains("10.1.2.3".parse().unwrap()));
    /// assert!(!net.contains("11.0.0.1".parse().unwrap()));
    /// assert!(IpNet::parse("2001:db8::/32").unwrap().contains("2001:db8::1".parse().unwrap()));
    /// assert!(IpNet::parse("10.0.0.0/33").is_none());
    /// ```
    pub fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a.trim().parse::<IpAddr>().ok()?,
                Some(p.trim().parse::<u8>().ok()?),
            ),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A named list (`lists:` at the top of a rule file): items match by equality, by CIDR when
/// they are networks or addresses, and by glob when they contain `*` or `?`.
#[derive(Debug, Clone, Default)]
pub struct NamedList {
    literals: Vec<Literal>,
    nets: Vec<IpNet>,
    globs: Vec<Regex>,
}

impl NamedList {
    /// Builds a list from its YAML items.
    pub fn parse(items: &Yaml) -> Result<NamedList, String> {
        let Yaml::Sequence(items) = items else {
            return Err("a list must be a sequence of values".into());
        };
        let mut list = NamedList::default();
        for item in items {
            let lit = Literal::parse(item)?;
            if let Literal::Str(s) = &lit {
                if let Some(net) = IpNet::parse(s) {
                    list.nets.push(net);
                } else if s
                    .split_once('/')
                    .is_some_and(|(a, _)| a.parse::<IpAddr>().is_ok())
                {
                    return Err(format!(
                        "`{s}` is not a network like 10.0.0.0/8 or 2001:db8::/32"
                    ));
                } else if s.contains(['*', '?']) {
                    list.globs.push(glob_regex(s)?);
                }
            }
            list.literals.push(lit);
        }
        Ok(list)
    }

    fn matches(&self, v: &Value<'_>) -> bool {
        self.literals.iter().any(|l| l.matches(v))
            || str_of(v).is_some_and(|s| {
                ip_of(s).is_some_and(|ip| self.nets.iter().any(|n| n.contains(ip)))
                    || self.globs.iter().any(|g| g.is_match(s))
            })
    }

    /// The items as text, if all are strings.
    pub fn strings(&self) -> Option<Vec<String>> {
        self.literals
            .iter()
            .map(|l| match l {
                Literal::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.literals.is_empty()
    }
}

/// A test applied to the values at one path.
#[derive(Debug, Clone)]
pub enum Test {
    /// Equal to any of these.
    Eq(Vec<Literal>),
    /// Not (the inner test).
    Not(Box<Test>),
    /// Matches a regex (globs are compiled to anchored regexes); the pattern as written.
    Pattern(Regex, String),
    /// An IP address inside any of these networks.
    Cidr(Vec<IpNet>),
    /// A number (or numeric text) within bounds.
    Range {
        /// `gte`
        gte: Option<i64>,
        /// `gt`
        gt: Option<i64>,
        /// `lte`
        lte: Option<i64>,
        /// `lt`
        lt: Option<i64>,
    },
    /// Present (true) or absent (false).
    Exists(bool),
    /// Text containing any of these.
    Contains(Vec<String>),
    /// In a named list.
    InList(String, NamedList),
    /// An image reference whose registry matches (`registry_in`, `want` true) or matches none
    /// (`registry_not_in`, `want` false) of these patterns; the text as written.
    Registry {
        /// `true` for `registry_in`.
        want: bool,
        /// The patterns.
        patterns: RegistryPatterns,
        /// The list name or the patterns, for messages.
        what: String,
    },
    /// Several operators in one mapping: all must hold.
    All(Vec<Test>),
}

fn str_of<'v>(v: &'v Value<'_>) -> Option<&'v str> {
    match v {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

fn ip_of(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok()
}

fn int_of(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Str(s) => s.parse().ok(),
        Value::Bool(_) => None,
    }
}

impl Test {
    /// Whether the values at a path (empty when absent) pass.
    pub fn holds(&self, values: &[Value<'_>]) -> bool {
        match self {
            Test::Eq(lits) => values.iter().any(|v| lits.iter().any(|l| l.matches(v))),
            Test::Not(t) => !t.holds(values),
            Test::Pattern(re, _) => values.iter().any(|v| match v {
                Value::Str(s) => re.is_match(s),
                other => re.is_match(&other.to_key()),
            }),
            Test::Cidr(nets) => values.iter().any(|v| {
                str_of(v)
                    .and_then(ip_of)
                    .is_some_and(|ip| nets.iter().any(|n| n.contains(ip)))
            }),
            Test::Range { gte, gt, lte, lt } => values.iter().any(|v| {
                int_of(v).is_some_and(|x| {
                    gte.is_none_or(|b| x >= b)
                        && gt.is_none_or(|b| x > b)
                        && lte.is_none_or(|b| x <= b)
                        && lt.is_none_or(|b| x < b)
                })
            }),
            Test::Exists(want) => values.is_empty() != *want,
            Test::Contains(subs) => values.iter().any(|v| {
                let text = match v {
                    Value::Str(s) => std::borrow::Cow::Borrowed(s.as_ref()),
                    other => std::borrow::Cow::Owned(other.to_key()),
                };
                subs.iter().any(|s| text.contains(s.as_str()))
            }),
            Test::InList(_, list) => values.iter().any(|v| list.matches(v)),
            Test::Registry { want, patterns, .. } => values.iter().any(|v| {
                str_of(v)
                    .and_then(image_registry)
                    .is_some_and(|r| patterns.matches(&r) == *want)
            }),
            Test::All(tests) => tests.iter().all(|t| t.holds(values)),
        }
    }
}

/// A condition tree.
#[derive(Debug, Clone)]
pub enum Cond {
    /// A test at one path.
    Field {
        /// The path as written.
        path: String,
        /// The resolved path.
        field: FieldPath,
        /// The test.
        test: Test,
    },
    /// All must hold (`all:`, and the top of `match`).
    All(Vec<Cond>),
    /// At least one must hold (`any:`, and the top of `exclude`).
    Any(Vec<Cond>),
}

impl Cond {
    /// Evaluates the condition on one event.
    pub fn holds(&self, facts: &EventFacts<'_, '_, '_>) -> bool {
        match self {
            Cond::Field { field, test, .. } => test.holds(&facts.values(field)),
            Cond::All(cs) => cs.iter().all(|c| c.holds(facts)),
            Cond::Any(cs) => cs.iter().any(|c| c.holds(facts)),
        }
    }

    /// How expensive evaluating this is: 0 for decoded fields, 1 for annotations (their map
    /// is decoded), 2 for anything that needs the raw event parsed (request bodies). Groups
    /// cost their dearest member.
    pub fn cost(&self) -> u8 {
        match self {
            Cond::Field { field, .. } if field.needs_raw() => 2,
            Cond::Field {
                field: FieldPath::Annotation(_),
                ..
            } => 1,
            Cond::Field { .. } => 0,
            Cond::All(cs) | Cond::Any(cs) => cs.iter().map(Cond::cost).max().unwrap_or(0),
        }
    }

    /// Calls `f` on every field condition in the tree.
    pub fn visit_fields<'c>(&'c self, f: &mut dyn FnMut(&'c str, &'c FieldPath, &'c Test)) {
        match self {
            Cond::Field { path, field, test } => f(path, field, test),
            Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| c.visit_fields(f)),
        }
    }
}

/// Parses a `match`/`exclude` mapping (or an `any:`/`all:` list item). `at` is the field
/// path used in error messages (`match`, `exclude.any[2]`...). Errors are (field, message).
pub fn parse_conditions(
    v: &Yaml,
    at: &str,
    lists: &BTreeMap<String, NamedList>,
) -> Result<Vec<Cond>, (String, String)> {
    let Yaml::Mapping(m) = v else {
        return Err((
            at.into(),
            "expected a mapping of field paths to values".into(),
        ));
    };
    let mut out = Vec::new();
    for (k, v) in m {
        let Some(key) = k.as_str() else {
            return Err((at.into(), "field paths must be strings".into()));
        };
        match key {
            "any" | "all" => {
                let here = format!("{at}.{key}");
                let Yaml::Sequence(items) = v else {
                    return Err((here, "expected a list of condition mappings".into()));
                };
                if items.is_empty() {
                    return Err((here, "an empty group is always true or always false".into()));
                }
                let mut group = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    group.push(Cond::All(parse_conditions(
                        item,
                        &format!("{here}[{i}]"),
                        lists,
                    )?));
                }
                out.push(if key == "any" {
                    Cond::Any(group)
                } else {
                    Cond::All(group)
                });
            }
            "" => return Err((at.into(), "empty field path".into())),
            path => {
                let here = format!("{at}.{path}");
                let field = FieldPath::parse_checked(path)
                    .map_err(|m| (here.clone(), format!("bad field path: {m}")))?;
                let test = parse_test(v, lists).map_err(|m| (here, m))?;
                out.push(Cond::Field {
                    path: path.to_owned(),
                    field,
                    test,
                });
            }
        }
    }
    // Cheapest first (a stable sort: equal costs keep the order written). All conditions
    // are pure, so the order changes only the cost, never the outcome.
    out.sort_by_key(Cond::cost);
    Ok(out)
}

const OPERATORS: &str = "not, glob, regex, cidr, gte, gt, lte, lt, exists, contains, in_list, registry_in, registry_not_in";

/// The registry of an image reference, as the container runtime resolves it: the first
/// `/`-separated component when it has a `.` or a `:` or is `localhost` (`my.reg:5000/x`,
/// `localhost/x`), else `docker.io` (`nginx`, `library/nginx`, `bitnami/redis:7`);
/// `index.docker.io` is `docker.io`. Lowercased. Tags and digests (`@sha256:...`) are not part
/// of it. `None` for an empty reference.
///
/// ```
/// use authwatch_rules::condition::image_registry;
/// assert_eq!(image_registry("nginx:1.25").as_deref(), Some("docker.io"));
/// assert_eq!(image_registry("library/nginx@sha256:ab12").as_deref(), Some("docker.io"));
/// assert_eq!(image_registry("my.reg:5000/team/app:v1").as_deref(), Some("my.reg:5000"));
/// assert_eq!(image_registry("localhost/app").as_deref(), Some("localhost"));
/// assert_eq!(image_registry("localhost:5000/app").as_deref(), Some("localhost:5000"));
/// assert_eq!(image_registry("").as_deref(), None);
/// ```
pub fn image_registry(image: &str) -> Option<String> {
    let image = image.trim();
    if image.is_empty() {
        return None;
    }
    let registry = match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => return Some("docker.io".into()),
    };
    Some(if registry == "index.docker.io" {
        "docker.io".into()
    } else {
        registry
    })
}

/// Registry patterns (`registry_in`): host names with an optional port, `*` and `?` globs
/// (`*.dkr.ecr.*.amazonaws.com`), compared without regard to case.
#[derive(Debug, Clone)]
pub struct RegistryPatterns {
    exact: Vec<String>,
    globs: Vec<Regex>,
}

impl RegistryPatterns {
    /// Checks and compiles patterns.
    pub fn parse(patterns: &[String]) -> Result<RegistryPatterns, String> {
        if patterns.is_empty() {
            return Err("empty list of registries".into());
        }
        let mut out = RegistryPatterns {
            exact: Vec::new(),
            globs: Vec::new(),
        };
        for p in patterns {
            let p = p.trim().to_ascii_lowercase();
            if p.is_empty() {
                return Err("an empty registry pattern".into());
            }
            if p.contains('/') {
                return Err(format!(
                    "`{p}` is not a registry: a registry is a host name with an optional port (registry.k8s.io, my.reg:5000), without a path"
                ));
            }
            if let Some(c) = p
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*' | '?')))
            {
                return Err(format!(
                    "`{p}` is not a registry pattern: `{c}` (use host names, ports, `*` and `?`)"
                ));
            }
            if p.contains(['*', '?']) {
                out.globs.push(glob_regex(&p)?);
            } else {
                out.exact.push(p);
            }
        }
        Ok(out)
    }

    /// Whether a registry (as [`image_registry`] gives it) matches any pattern.
    pub fn matches(&self, registry: &str) -> bool {
        self.exact.iter().any(|e| e == registry) || self.globs.iter().any(|g| g.is_match(registry))
    }
}

fn strings(v: &Yaml, what: &str) -> Result<Vec<String>, String> {
    let items: Vec<&Yaml> = match v {
        Yaml::Sequence(s) if s.is_empty() => return Err(format!("empty list of {what}")),
        Yaml::Sequence(s) => s.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .map(|i| match i {
            Yaml::String(s) => Ok(s.clone()),
            _ => Err(format!("expected {what} (strings)")),
        })
        .collect()
}

/// Compiles a glob (`*` any run, `?` one character) into an anchored regex.
pub fn glob_regex(glob: &str) -> Result<Regex, String> {
    let mut re = String::with_capacity(glob.len() + 8);
    re.push_str("^(?s:");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push_str(")$");
    compile_regex(&re)
}

fn compile_regex(re: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("bad regex: {e}"))
}

fn int_arg(v: &Yaml, op: &str) -> Result<i64, String> {
    match v {
        Yaml::Number(n) => n.as_i64().ok_or_else(|| format!("`{op}` needs an integer")),
        _ => Err(format!("`{op}` needs an integer")),
    }
}

/// Parses the value of one path in a condition mapping.
pub fn parse_test(v: &Yaml, lists: &BTreeMap<String, NamedList>) -> Result<Test, String> {
    let m = match v {
        Yaml::Mapping(m) => m,
        Yaml::Sequence(items) if items.is_empty() => {
            return Err("empty list matches nothing".into())
        }
        Yaml::Sequence(items) => {
            return Ok(Test::Eq(
                items.iter().map(Literal::parse).collect::<Result<_, _>>()?,
            ))
        }
        other => return Ok(Test::Eq(vec![Literal::parse(other)?])),
    };
    if m.is_empty() {
        return Err(format!("empty operator mapping (operators: {OPERATORS})"));
    }
    let mut tests = Vec::new();
    let (mut gte, mut gt, mut lte, mut lt) = (None, None, None, None);
    for (k, arg) in m {
        let op = k.as_str().unwrap_or("");
        match op {
            "not" => tests.push(Test::Not(Box::new(parse_test(arg, lists)?))),
            "glob" => {
                let globs = strings(arg, "glob patterns")?;
                let joined = globs.join(" | ");
                let parts: Vec<String> = globs
                    .iter()
                    .map(|g| glob_regex(g).map(|r| r.as_str().to_owned()))
                    .collect::<Result<_, _>>()?;
                tests.push(Test::Pattern(
                    compile_regex(&parts.join("|"))?,
                    format!("glob {joined}"),
                ));
            }
            "regex" => {
                let res = strings(arg, "regular expressions")?;
                let joined = res
                    .iter()
                    .map(|r| format!("(?:{r})"))
                    .collect::<Vec<_>>()
                    .join("|");
                tests.push(Test::Pattern(
                    compile_regex(&joined)?,
                    format!("regex {}", res.join(" | ")),
                ));
            }
            "cidr" => {
                let nets = strings(arg, "networks")?
                    .iter()
                    .map(|s| {
                        IpNet::parse(s).ok_or_else(|| {
                            format!("`{s}` is not a network like 10.0.0.0/8 or 2001:db8::/32")
                        })
                    })
                    .collect::<Result<_, _>>()?;
                tests.push(Test::Cidr(nets));
            }
            "gte" => gte = Some(int_arg(arg, op)?),
            "gt" => gt = Some(int_arg(arg, op)?),
            "lte" => lte = Some(int_arg(arg, op)?),
            "lt" => lt = Some(int_arg(arg, op)?),
            "exists" => match arg {
                Yaml::Bool(b) => tests.push(Test::Exists(*b)),
                _ => return Err("`exists` needs true or false".into()),
            },
            "contains" => tests.push(Test::Contains(strings(arg, "substrings")?)),
            "in_list" => {
                let Some(name) = arg.as_str() else {
                    return Err("`in_list` needs the name of a list".into());
                };
                let list = lists.get(name).ok_or_else(|| {
                    format!("no list named `{name}` (lists are declared under `lists:` at the top of the file)")
                })?;
                tests.push(Test::InList(name.to_owned(), list.clone()));
            }
            "registry_in" | "registry_not_in" => {
                let (items, what) = match arg {
                    Yaml::String(name) => {
                        let list = lists.get(name).ok_or_else(|| {
                            format!("no list named `{name}` (`{op}` takes the name of a list declared under `lists:`, or a list of registries like [registry.k8s.io])")
                        })?;
                        (
                            list.strings().ok_or_else(|| {
                                format!("list `{name}` holds a value that is not a registry name")
                            })?,
                            name.clone(),
                        )
                    }
                    Yaml::Sequence(_) => {
                        let items = strings(arg, "registries")?;
                        let what = items.join(", ");
                        (items, what)
                    }
                    _ => return Err(format!("`{op}` needs a list name or a list of registries")),
                };
                let patterns =
                    RegistryPatterns::parse(&items).map_err(|e| format!("`{op}`: {e}"))?;
                tests.push(Test::Registry {
                    want: op == "registry_in",
                    patterns,
                    what,
                });
            }
            other => {
                return Err(format!(
                    "unknown operator `{other}` (operators: {OPERATORS})"
                ))
            }
        }
    }
    if gte.is_some() || gt.is_some() || lte.is_some() || lt.is_some() {
        tests.push(Test::Range { gte, gt, lte, lt });
    }
    Ok(if tests.len() == 1 {
        tests.remove(0)
    } else {
        Test::All(tests)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn t(yaml: &str) -> Test {
        let mut lists = BTreeMap::new();
        lists.insert(
            "trusted".to_string(),
            NamedList::parse(&serde_norway::from_str("[10.0.0.0/8, 'scanner-*', bob]").unwrap())
                .unwrap(),
        );
        parse_test(&serde_norway::from_str(yaml).unwrap(), &lists).unwrap()
    }
    fn s(x: &str) -> Value<'_> {
        Value::Str(Cow::Borrowed(x))
    }

    #[test]
    fn operators() {
        assert!(t("[401, 403]").holds(&[Value::Int(403)]));
        assert!(!t("[401, 403]").holds(&[Value::Int(404)]));
        assert!(t("{not: [401, 403]}").holds(&[Value::Int(200)]));
        assert!(t("{not: [401, 403]}").holds(&[]));
        assert!(t("{glob: 'system:serviceaccount:kube-system:*'}")
            .holds(&[s("system:serviceaccount:kube-system:coredns")]));
        assert!(!t("{glob: 'system:serviceaccount:kube-system:*'}")
            .holds(&[s("system:serviceaccount:default:x")]));
        assert!(t("{glob: ['a?c', 'x.*']}").holds(&[s("x.yz")]));
        assert!(
            !t("{glob: 'x.*'}").holds(&[s("xayz")]),
            "glob dots are literal"
        );
        assert!(
            t("{regex: '^kubectl/v1\\.(2[0-9]|3[0-9])'}").holds(&[s("kubectl/v1.30.2 (darwin)")])
        );
        assert!(
            t("{cidr: ['10.0.0.0/8', '2001:db8::/32']}").holds(&[s("198.51.100.7"), s("10.0.3.4")])
        );
        assert!(t("{cidr: '2001:db8::/32'}").holds(&[s("2001:db8::7")]));
        assert!(!t("{cidr: '10.0.0.0/8'}").holds(&[s("not-an-ip"), s("11.0.0.1")]));
        assert!(t("{cidr: '10.0.0.0/8'}").holds(&[s("::ffff:10.1.1.1")]));
        assert!(t("{gte: 400, lt: 500}").holds(&[Value::Int(403)]));
        assert!(!t("{gte: 400, lt: 500}").holds(&[Value::Int(500)]));
        assert!(t("{gte: 400}").holds(&[s("401")]));
        assert!(t("{exists: true}").holds(&[s("x")]));
        assert!(t("{exists: false}").holds(&[]));
        assert!(t("{contains: [secret, token]}").holds(&[s("/api/v1/secrets")]));
        assert!(t("{in_list: trusted}").holds(&[s("10.2.3.4")]));
        assert!(t("{in_list: trusted}").holds(&[s("scanner-7")]));
        assert!(t("{in_list: trusted}").holds(&[s("bob")]));
        assert!(!t("{in_list: trusted}").holds(&[s("alice"), s("192.0.2.1")]));
        assert!(t("{not: {in_list: trusted}}").holds(&[s("alice")]));
    }

    #[test]
    fn registries() {
        for (image, reg) in [
            ("nginx", "docker.io"),
            ("nginx:1.25", "docker.io"),
            ("library/nginx", "docker.io"),
            ("bitnami/redis:7@sha256:0123abcd", "docker.io"),
            ("docker.io/library/nginx", "docker.io"),
            ("index.docker.io/library/nginx", "docker.io"),
            ("nginx@sha256:0123abcd", "docker.io"),
            ("my.reg:5000/team/app:v1", "my.reg:5000"),
            ("myreg:5000/app", "myreg:5000"),
            ("localhost/app", "localhost"),
            ("LOCALHOST:5000/app", "localhost:5000"),
            (
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app@sha256:ff",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            ),
            (
                "public.ecr.aws/eks/aws-load-balancer-controller:v2.7.0",
                "public.ecr.aws",
            ),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io"),
            ("Quay.IO/coreos/etcd", "quay.io"),
        ] {
            assert_eq!(image_registry(image).as_deref(), Some(reg), "{image}");
        }
        let mut lists = BTreeMap::new();
        lists.insert(
            "trusted".to_string(),
            NamedList::parse(
                &serde_norway::from_str(
                    "['*.dkr.ecr.*.amazonaws.com', public.ecr.aws, registry.k8s.io]",
                )
                .unwrap(),
            )
            .unwrap(),
        );
        let t = |y: &str| parse_test(&serde_norway::from_str(y).unwrap(), &lists).unwrap();
        let ecr = s("123456789012.dkr.ecr.us-east-1.amazonaws.com/app:1");
        let k8s = s("registry.k8s.io/pause:3.9");
        let hub = s("nginx");
        let evil = s("evil.example.com/dkr.ecr.x.amazonaws.com/app");
        assert!(t("{registry_in: trusted}").holds(std::slice::from_ref(&ecr)));
        assert!(t("{registry_in: trusted}").holds(&[hub.clone(), k8s.clone()]));
        assert!(!t("{registry_in: trusted}").holds(&[hub.clone(), evil.clone()]));
        assert!(!t("{registry_not_in: trusted}").holds(&[ecr.clone(), k8s.clone()]));
        // Some untrusted image among trusted ones.
        assert!(t("{registry_not_in: trusted}").holds(&[ecr.clone(), hub.clone()]));
        assert!(t("{registry_not_in: trusted}").holds(std::slice::from_ref(&evil)));
        // `not: registry_in` is "no trusted image", which a mixed pod is not.
        assert!(!t("{not: {registry_in: trusted}}").holds(&[ecr.clone(), hub.clone()]));
        // No images: neither holds.
        assert!(!t("{registry_not_in: trusted}").holds(&[]));
        assert!(!t("{registry_in: trusted}").holds(&[]));
        assert!(t("{registry_in: [docker.io, 'my.reg:5000']}").holds(&[s("my.reg:5000/x")]));
        assert!(!t("{registry_in: [docker.io]}").holds(&[s("docker.io.evil.com/x")]));
        assert!(t("{registry_in: ['*.example.com']}").holds(&[s("Reg.Example.com/x")]));
    }

    #[test]
    fn literals_compare_across_number_and_text() {
        assert!(Literal::Int(403).matches(&Value::Str("403".into())));
        assert!(Literal::Str("403".into()).matches(&Value::Int(403)));
        assert!(!Literal::Str("bob".into()).matches(&Value::Int(403)));
        assert!(Literal::Bool(true).matches(&Value::Bool(true)));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let lists = BTreeMap::new();
        let e = |y: &str| parse_test(&serde_norway::from_str(y).unwrap(), &lists).unwrap_err();
        assert!(e("{regex: '('}").starts_with("bad regex"));
        assert!(
            e("{regex: 'a{10000}{10000}'}").starts_with("bad regex"),
            "size-limited"
        );
        assert!(e("{cidr: '10.0.0.0/40'}").contains("not a network"));
        assert!(e("{in_list: nope}").contains("no list named `nope`"));
        assert!(e("{wat: 1}").contains("unknown operator `wat`"));
        assert!(e("{exists: yes please}").contains("true or false"));
        assert!(e("[]").contains("empty list"));
        assert!(e("{registry_in: nope}").contains("no list named `nope`"));
        assert!(e("{registry_in: ['docker.io/library']}").contains("without a path"));
        assert!(e("{registry_not_in: ['reg example']}").contains("not a registry pattern"));
        assert!(e("{registry_not_in: []}").contains("empty list"));
        assert!(e("{registry_in: 5}").contains("list name or a list"));
    }
}
