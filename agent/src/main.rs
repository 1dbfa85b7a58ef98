//! `gureum-agent --listen PATH`: serve one run request on a Unix socket (native mode and tests).
//! In a microVM the agent is PID 1 and serves over vsock (to come with the sandbox).

use std::os::unix::net::UnixListener;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1..).unwrap_or_default() {
        [flag, path] if flag == "--listen" => match listen(path) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("gureum-agent: {e}");
                1
            }
        },
        _ => {
            eprintln!("usage: gureum-agent --listen PATH");
            2
        }
    };
    std::process::exit(code);
}

fn listen(path: &str) -> Result<(), String> {
    let listener = UnixListener::bind(path).map_err(|e| format!("cannot listen on {path}: {e}"))?;
    let (conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    let writer = conn.try_clone().map_err(|e| format!("socket: {e}"))?;
    let _ = std::fs::remove_file(path);
    gureum_agent::runner::serve(conn, writer).map_err(|e| e.to_string())
}
