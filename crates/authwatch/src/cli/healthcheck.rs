//! `authwatch healthcheck`: ask a running authwatch's /healthz or /readyz.

use std::process::ExitCode;

pub fn healthcheck(addr: &str, ready: bool) -> ExitCode {
    use std::io::{Read, Write};
    let path = if ready { "/readyz" } else { "/healthz" };
    let answer = (|| -> std::io::Result<String> {
        let sock: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_secs(3))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })();
    match answer {
        Ok(t) if t.split_whitespace().nth(1) == Some("200") => ExitCode::SUCCESS,
        Ok(t) => {
            eprintln!("authwatch: {path}: {}", t.lines().last().unwrap_or(""));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("authwatch: {path} on {addr}: {e}");
            ExitCode::from(1)
        }
    }
}
