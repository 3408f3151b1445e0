//! `authgate echo`: a tiny demo backend that answers every request with a
//! JSON description of what it received (method, path, headers), so the
//! quick start can show the identity headers the gateway injects. Not for
//! production traffic: one thread per connection, bodies are not read
//! beyond their declared length.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// Serves forever on `addr`.
pub fn serve(addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    eprintln!("echo backend listening on {addr}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = handle(stream);
        });
    }
    Ok(())
}

fn handle(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = serde_json::Map::new();
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                if k == "content-length" {
                    len = v.parse().unwrap_or(0).min(1 << 20);
                }
                if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
                headers.insert(k, serde_json::Value::String(v));
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let reply = serde_json::json!({"method": method, "path": path, "headers": headers});
        let text = serde_json::to_string_pretty(&reply).unwrap_or_default() + "\n";
        // One write: split writes meet Nagle and delayed ACKs (40 ms stalls).
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            text.len(),
            text
        );
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}
