//! `authwatch top` driven in tmux: it shows the planted top address, switches dimension and
//! window on keys, and exits cleanly (status 0, terminal back in canonical mode) on `q` and on
//! Ctrl-C. Needs tmux: skipped with a notice locally without it, a failure under `CI=true`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tmux_or_skip() -> bool {
    if Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but tmux is missing: the `authwatch top` test needs it (.ci/run installs it)"
        );
    }
    eprintln!("notice: tmux is missing; skipping the `authwatch top` test");
    false
}

struct Session {
    socket: String,
}

impl Session {
    fn start(tag: &str, cmd: &str) -> Session {
        let socket = format!("authwatch-test-{}-{tag}", std::process::id());
        let s = Session { socket };
        let ok = s
            .tmux(&["new-session", "-d", "-s", "t", "-x", "150", "-y", "45", cmd])
            .status
            .success();
        assert!(ok, "tmux new-session");
        s
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", "t", keys]);
    }

    fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn data(dir: &Path) -> String {
    let out = dir.join("gen.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_authwatch"))
        .args(["generate", "--events", "20000", "--seed", "9", "--out"])
        .arg(&out)
        .output()
        .expect("generate");
    assert!(o.status.success());
    out.display().to_string()
}

fn run_and_quit(tag: &str, quit_key: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = data(dir.path());
    let cmd = format!(
        "{} top --refresh 1 {input}; echo EXITED $?; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; sleep 120",
        env!("CARGO_BIN_EXE_authwatch")
    );
    let s = Session::start(tag, &cmd);
    let screen = s.wait_for("the planted address on top", |s| {
        s.contains("input ended")
            && s.lines()
                .any(|l| l.contains("│1 ") && l.contains("198.51.100.7"))
    });
    assert!(
        screen.contains("[sourceIPs]") && screen.contains("[15m]"),
        "{screen}"
    );
    assert!(
        screen.contains("denied-by-source-ip"),
        "the alerts pane: {screen}"
    );
    s.keys("w");
    s.wait_for("the 60-minute window", |s| s.contains("[60m]"));
    s.keys("d");
    s.wait_for("the user dimension", |s| {
        s.contains("[user.username]") && s.contains("system:serviceaccount:default:scanner")
    });
    s.keys(quit_key);
    let after = s.wait_for("exit and the terminal mode", |s| {
        s.contains("EXITED") && s.lines().any(|l| l.trim().ends_with("icanon"))
    });
    assert!(after.contains("EXITED 0"), "{after}");
    assert!(
        after.lines().any(|l| l.trim() == "icanon"),
        "the terminal is back in canonical mode: {after}"
    );
}

#[test]
fn top_shows_the_planted_address_and_exits_on_q() {
    if tmux_or_skip() {
        run_and_quit("q", "q");
    }
}

#[test]
fn top_exits_cleanly_on_ctrl_c() {
    if tmux_or_skip() {
        run_and_quit("c", "C-c");
    }
}
