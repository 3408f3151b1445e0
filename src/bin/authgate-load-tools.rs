//! Helpers for `benches/load.sh`: a binary built only with `--features
//! load-tools` (`cargo build --profile dist --features load-tools --bin
//! authgate-load-tools`), so it can use the library and its dependencies
//! without a normal build or `cargo test` compiling it. It does nothing
//! unless given one of its commands:
//!
//! ```text
//! authgate-load-tools mint --alg RS256 --key PEM --issuer URL --count N --users U --out FILE [--ttl-secs S]
//! authgate-load-tools sessions --count N --secret S --prefix sess: --cookies FILE --resp FILE
//! authgate-load-tools ports N
//! authgate-load-tools rate --addr HOST:PORT --path /p --rate R --secs S [--warmup S] [--conns C]
//!                           [--tokens FILE] [--kind bearer|cookie] [--pair-path /p2]
//! ```
//!
//! `mint` writes one signed JWT per line (`sub` = `user-<i mod U>`, a unique
//! `jti` each), signing on every core. `sessions` writes express-session
//! signed cookie values and the matching connect-redis `SET`s as a RESP
//! stream for `redis-cli --pipe`. `ports` prints N free loopback ports. `rate` is an open-loop, fixed-rate HTTP/1.1
//! client (what wrk2 does): request `i` is due at `start + i / rate`, sent on
//! the first free keep-alive connection, and its latency is measured from
//! that due time, so a stall counts against every request it delayed
//! (no coordinated omission). It busy-polls non-blocking sockets on one
//! thread, so pin it to a core of its own. With `--pair-path`, every other
//! request goes to that path without credentials, and its latencies are
//! reported apart (`pair_p50_ms`, `pair_p99_ms`): the two classes share the
//! same seconds, connections and server, so a stall of the host lands on
//! both and their difference is what the credentials cost.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use authgate::testing::keys::signing_key_from_pem;
use authgate::testing::session::sign_cookie;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("mint") => mint(&Args(&args[1..])),
        Some("sessions") => sessions(&Args(&args[1..])),
        Some("rate") => rate(&Args(&args[1..])),
        Some("ports") => ports(&Args(&args[1..])),
        _ => {
            println!(
                "authgate-load-tools: helpers for benches/load.sh (mint, sessions, ports, rate); nothing to run"
            );
            return;
        }
    };
    if let Err(e) = result {
        eprintln!("authgate-load-tools: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, String>;

struct Args<'a>(&'a [String]);

impl Args<'_> {
    fn opt(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }
    fn req(&self, name: &str) -> Res<&str> {
        self.opt(name).ok_or_else(|| format!("missing {name}"))
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Res<T> {
        match (self.opt(name), default) {
            (Some(v), _) => v.parse().map_err(|_| format!("bad {name}: {v}")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("missing {name}")),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mint(a: &Args) -> Res<()> {
    let alg: Algorithm = a
        .req("--alg")?
        .parse()
        .map_err(|e| format!("--alg: {e:?}"))?;
    let key_path = a.req("--key")?;
    let issuer = a.req("--issuer")?.to_string();
    let count: usize = a.num("--count", None)?;
    let users: usize = a.num("--users", Some(count))?;
    let ttl: u64 = a.num("--ttl-secs", Some(86_400))?;
    let out = a.req("--out")?;
    let raw = fs::read(key_path).map_err(|e| format!("{key_path}: {e}"))?;
    let key = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        // Like a `secret_file`: one trailing newline is not part of it.
        let mut s = raw;
        if s.last() == Some(&b'\n') {
            s.pop();
        }
        EncodingKey::from_secret(&s)
    } else {
        signing_key_from_pem(&raw, alg).map_err(|e| format!("{key_path}: {e}"))?
    };
    let now = unix_now();
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let header = Header::new(alg);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(workers).max(1);
    let parts: Vec<Res<Vec<String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|from| {
                let (key, header, issuer) = (&key, &header, &issuer);
                s.spawn(move || {
                    (from..(from + chunk).min(count))
                        .map(|i| {
                            let user = i % users.max(1);
                            let claims = serde_json::json!({
                                "iss": issuer,
                                "aud": "api",
                                "sub": format!("user-{user:06}"),
                                "iat": now,
                                "exp": now + ttl,
                                "jti": format!("{:x}-{i:08x}", nonce),
                                "email": format!("user-{user:06}@example.com"),
                                "roles": ["reader", "writer"],
                                "scope": "orders:read orders:write",
                            });
                            jsonwebtoken::encode(header, &claims, key).map_err(|e| e.to_string())
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let mut w = BufWriter::new(fs::File::create(out).map_err(|e| format!("{out}: {e}"))?);
    for p in parts {
        for t in p? {
            writeln!(w, "{t}").map_err(|e| e.to_string())?;
        }
    }
    w.flush().map_err(|e| e.to_string())
}

fn ports(a: &Args) -> Res<()> {
    let n: usize = a.0.first().and_then(|v| v.parse().ok()).ok_or("ports N")?;
    // Hold them all until printed, so the N are distinct.
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    for l in &held {
        println!("{}", l.local_addr().map_err(|e| e.to_string())?.port());
    }
    Ok(())
}

fn resp(w: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    write!(w, "*{}\r\n", parts.len())?;
    for p in parts {
        write!(w, "${}\r\n", p.len())?;
        w.write_all(p)?;
        w.write_all(b"\r\n")?;
    }
    Ok(())
}

fn sessions(a: &Args) -> Res<()> {
    let count: usize = a.num("--count", None)?;
    let secret = a.req("--secret")?;
    let prefix = a.opt("--prefix").unwrap_or("sess:");
    let cookies = a.req("--cookies")?;
    let resp_out = a.req("--resp")?;
    let ttl_ms: u64 = 86_400_000;
    let expires =
        humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_millis(ttl_ms))
            .to_string();
    let mut c = BufWriter::new(fs::File::create(cookies).map_err(|e| e.to_string())?);
    let mut r = BufWriter::new(fs::File::create(resp_out).map_err(|e| e.to_string())?);
    for i in 0..count {
        let sid = format!("bench-{i:06}-{:08x}", i.wrapping_mul(2_654_435_761) as u32);
        let json = serde_json::json!({
            "cookie": {"originalMaxAge": ttl_ms, "expires": expires, "httpOnly": true, "path": "/"},
            "userId": format!("user-{i:06}"),
            "email": format!("user-{i:06}@example.com"),
            "role": ["reader"],
        })
        .to_string();
        let value = sign_cookie(&sid, secret.as_bytes());
        writeln!(c, "{value}").map_err(|e| e.to_string())?;
        let key = format!("{prefix}{sid}");
        let ex = (ttl_ms / 1000).to_string();
        resp(
            &mut r,
            &[
                b"SET",
                key.as_bytes(),
                json.as_bytes(),
                b"EX",
                ex.as_bytes(),
            ],
        )
        .map_err(|e| e.to_string())?;
    }
    c.flush().map_err(|e| e.to_string())?;
    r.flush().map_err(|e| e.to_string())
}

/// One keep-alive connection of the fixed-rate client.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    /// When the in-flight request was due.
    due: Option<Instant>,
    measured: bool,
    /// The in-flight request went to `--pair-path`.
    pair: bool,
}

/// The length of the first complete HTTP/1.1 response in `b` and its
/// status, if it is all there (Content-Length bodies only).
fn complete(b: &[u8]) -> Res<Option<(usize, u16)>> {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&b[..end]).map_err(|_| "non-UTF-8 response head")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut len = None;
    for line in head.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked responses are not supported".into());
            }
        }
    }
    let total = end + 4 + len.ok_or("response without Content-Length")?;
    Ok((b.len() >= total).then_some((total, status)))
}

fn rate(a: &Args) -> Res<()> {
    let addr = a.req("--addr")?;
    let path = a.req("--path")?;
    let rate: f64 = a.num("--rate", None)?;
    let secs: f64 = a.num("--secs", None)?;
    let warmup: f64 = a.num("--warmup", Some(1.0))?;
    let nconns: usize = a.num("--conns", Some(32))?;
    let kind = a.opt("--kind").unwrap_or("bearer");
    let host = addr.to_string();
    let creds: Vec<String> = match a.opt("--tokens") {
        Some(f) => io::BufReader::new(fs::File::open(f).map_err(|e| format!("{f}: {e}"))?)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.is_empty())
            .collect(),
        None => vec![],
    };
    let pair_request = a
        .opt("--pair-path")
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes());
    let requests: Vec<Vec<u8>> = if creds.is_empty() {
        vec![format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()]
    } else {
        creds
            .iter()
            .map(|c| {
                let h = match kind {
                    "cookie" => format!("Cookie: sessionId={c}"),
                    _ => format!("Authorization: Bearer {c}"),
                };
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{h}\r\n\r\n").into_bytes()
            })
            .collect()
    };
    let mut conns = Vec::with_capacity(nconns);
    for _ in 0..nconns {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        conns.push(Conn {
            s,
            buf: Vec::with_capacity(4096),
            due: None,
            measured: false,
            pair: false,
        });
    }
    let mut free: VecDeque<usize> = (0..nconns).collect();
    let mut busy: Vec<usize> = Vec::with_capacity(nconns);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + Duration::from_secs_f64(warmup);
    let stop_issuing = measure_from + Duration::from_secs_f64(secs);
    let hard_stop = stop_issuing + Duration::from_secs(5);
    let mut next: u64 = 0;
    let mut lat_us: Vec<u32> = Vec::with_capacity((rate * secs * 1.1) as usize + 16);
    let mut pair_us: Vec<u32> = Vec::with_capacity(lat_us.capacity());
    let (mut errors, mut non200) = (0u64, 0u64);
    let mut rbuf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        if now >= hard_stop {
            return Err(format!(
                "{} requests still in flight 5 s after the end",
                busy.len()
            ));
        }
        // Issue every request that is due, while a connection is free.
        loop {
            let due = start + interval.mul_f64(next as f64);
            if due > now || due >= stop_issuing {
                break;
            }
            let Some(c) = free.pop_front() else { break };
            // paired: even requests take the credentials in turn, odd ones the pair path
            let (req, pair) = match &pair_request {
                Some(p) if next % 2 == 1 => (p, true),
                Some(_) => (&requests[(next / 2) as usize % requests.len()], false),
                None => (&requests[next as usize % requests.len()], false),
            };
            let conn = &mut conns[c];
            let mut off = 0;
            while off < req.len() {
                match conn.s.write(&req[off..]) {
                    Ok(0) => return Err("connection closed on write".into()),
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            conn.due = Some(due);
            conn.measured = due >= measure_from;
            conn.pair = pair;
            busy.push(c);
            next += 1;
        }
        if now >= stop_issuing && busy.is_empty() {
            break;
        }
        // Collect responses.
        let mut i = 0;
        while i < busy.len() {
            let c = busy[i];
            let conn = &mut conns[c];
            match conn.s.read(&mut rbuf) {
                Ok(0) => return Err("connection closed by the server".into()),
                Ok(n) => conn.buf.extend_from_slice(&rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            match complete(&conn.buf)? {
                Some((len, status)) => {
                    let done = Instant::now();
                    conn.buf.drain(..len);
                    if !conn.buf.is_empty() {
                        errors += 1;
                    }
                    if conn.measured {
                        let due = conn.due.unwrap_or(done);
                        let us = done.duration_since(due).as_micros().min(u32::MAX as u128) as u32;
                        if conn.pair {
                            pair_us.push(us);
                        } else {
                            lat_us.push(us);
                        }
                        if status != 200 {
                            non200 += 1;
                        }
                    }
                    conn.due = None;
                    busy.swap_remove(i);
                    free.push_back(c);
                }
                None => i += 1,
            }
        }
    }
    lat_us.sort_unstable();
    pair_us.sort_unstable();
    let pct = |v: &[u32], p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        v[idx] as f64 / 1000.0
    };
    // One line, `key=value`, for the script to parse.
    print!(
        "requests={} rate={:.0} achieved={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} non200={} errors={}",
        lat_us.len(),
        rate,
        (lat_us.len() + pair_us.len()) as f64 / secs,
        pct(&lat_us, 50.0),
        pct(&lat_us, 90.0),
        pct(&lat_us, 99.0),
        pct(&lat_us, 99.9),
        lat_us.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
        non200,
        errors
    );
    if pair_request.is_some() {
        print!(
            " pair_requests={} pair_p50_ms={:.3} pair_p99_ms={:.3} pair_p999_ms={:.3}",
            pair_us.len(),
            pct(&pair_us, 50.0),
            pct(&pair_us, 99.0),
            pct(&pair_us, 99.9),
        );
    }
    println!();
    Ok(())
}
