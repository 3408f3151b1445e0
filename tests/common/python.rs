//! The tests' Python peers, from the venv `tests/python/setup.sh` makes
//! (PyJWT, grpcio, websockets): [`python`] is its interpreter;
//! [`GrpcServer`] and [`grpc_call`] run `tests/peers/grpc_peer.py` (a grpcio
//! server and client), [`WsServer`] and [`ws_client`] run
//! `tests/peers/ws.py` (a `websockets` server and client).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The venv interpreter (setup runs once per process).
pub fn python() -> &'static str {
    static PY: OnceLock<Result<String, String>> = OnceLock::new();
    let r = PY.get_or_init(|| {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/setup.sh");
        let out = Command::new("bash")
            .arg(&setup)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", setup.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}",
                setup.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .ok_or_else(|| "setup.sh printed no interpreter path".to_string())
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("the Python peers are not available: {e}"),
    }
}

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
        .display()
        .to_string()
}

/// A Python server process that prints `ready` once listening; killed on drop.
pub struct PyServer {
    pub addr: String,
    child: Child,
}

impl PyServer {
    fn start(file: &str, command: &str) -> PyServer {
        let port = super::free_port();
        let mut child = Command::new(python())
            .args([script(file), command.into(), port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {file} {command}: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's first line");
        assert_eq!(line.trim(), "ready", "{file} {command} did not start");
        PyServer {
            addr: format!("127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The grpcio server of `tests/peers/grpc_peer.py`.
pub type GrpcServer = PyServer;
/// The `websockets` echo server of `tests/peers/ws.py`.
pub type WsServer = PyServer;

pub fn grpc_server() -> GrpcServer {
    PyServer::start("grpc_peer.py", "serve")
}

pub fn ws_server() -> WsServer {
    PyServer::start("ws.py", "serve")
}

fn json_of(file: &str, out: std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{file} output is not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One call with the grpcio client (`service`: the gRPC service, default
/// `authgate.test.Echo`): its JSON report.
pub fn grpc_call(
    addr: &str,
    service: Option<&str>,
    method: &str,
    args: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.args([script("grpc_peer.py").as_str(), "call", addr, method])
        .args(args);
    if let Some(s) = service {
        cmd.env("AUTHGATE_GRPC_SERVICE", s);
    }
    json_of("grpc_peer.py", cmd.output().expect("run the grpcio client"))
}

/// Starts a grpcio call in the background; its report when joined.
pub fn grpc_call_async(
    addr: &str,
    method: &str,
    args: &[&str],
) -> std::thread::JoinHandle<serde_json::Value> {
    let (addr, method) = (addr.to_string(), method.to_string());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        grpc_call(&addr, None, &method, &args)
    })
}

/// Starts the `websockets` client in the background: it connects to `url`
/// (with `Authorization: Bearer <token>`), sends a message every 100 ms for
/// at most `seconds`, and reports (JSON) how many echoes came back and how
/// the connection ended.
pub fn ws_client_async(
    url: &str,
    token: &str,
    seconds: u32,
) -> std::thread::JoinHandle<serde_json::Value> {
    ws_client_with_cookie(url, token, seconds, "")
}

/// [`ws_client_async`] with a `Cookie` header too (`token` "-": no
/// `Authorization`).
pub fn ws_client_with_cookie(
    url: &str,
    token: &str,
    seconds: u32,
    cookie: &str,
) -> std::thread::JoinHandle<serde_json::Value> {
    let mut args = vec![
        script("ws.py"),
        "call".into(),
        url.to_string(),
        token.to_string(),
        seconds.to_string(),
    ];
    if !cookie.is_empty() {
        args.push(cookie.to_string());
    }
    std::thread::spawn(move || {
        let out = Command::new(python())
            .args(&args)
            .output()
            .expect("run the websockets client");
        json_of("ws.py", out)
    })
}
