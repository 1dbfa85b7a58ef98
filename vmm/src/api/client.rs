//! A client of the API socket, for `gureum snapshot` and the benchmarks: one request per
//! connection (`Connection: close`), the answer's status and body.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the API socket {0} (is a VM serving it?)")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("the API socket {0} broke off")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("the API socket {0} answered something that is not HTTP")]
    NotHttp(PathBuf),
    #[error("{method} {path}: {status}: {message}")]
    Refused {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
}

/// `method path` with `body` (JSON) on the API socket `sock`: the answer's body, if its status
/// is 2xx; otherwise the fault message, as an error.
pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> Result<String, Error> {
    let io = |e| Error::Io(sock.to_path_buf(), e);
    let mut stream =
        UnixStream::connect(sock).map_err(|e| Error::Connect(sock.to_path_buf(), e))?;
    // A snapshot of a large guest takes a while; a VMM that never answers does not hang us.
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(io)?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if let Some((status, body)) = parse(&answer) {
            return answered(method, path, status, body);
        }
    }
    match parse(&answer) {
        Some((status, body)) => answered(method, path, status, body),
        None => Err(Error::NotHttp(sock.to_path_buf())),
    }
}

/// What `gureum snapshot` does through the API: pauses the VM if it runs, writes the
/// snapshot, and resumes it unless `leave_paused` (or it was paused already).
pub fn snapshot(sock: &Path, state: &Path, mem: &Path, leave_paused: bool) -> Result<(), Error> {
    let info = call(sock, "GET", "/", None)?;
    let running =
        serde_json::from_str::<serde_json::Value>(&info).is_ok_and(|v| v["state"] == "Running");
    let set = |state: &str| {
        let body = serde_json::json!({ "state": state }).to_string();
        call(sock, "PATCH", "/vm", Some(&body)).map(drop)
    };
    if running {
        set("Paused")?;
    }
    let body = serde_json::json!({
        "snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem,
    });
    let made = call(sock, "PUT", "/snapshot/create", Some(&body.to_string()));
    if running && !leave_paused {
        set("Resumed")?;
    }
    made.map(drop)
}

/// A whole response: its status and body (Content-Length bytes of it).
fn parse(bytes: &[u8]) -> Option<(u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(bytes).ok()? else {
        return None;
    };
    let length = (response.headers.iter())
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0usize);
    let body = bytes.get(head..head + length)?;
    Some((response.code?, String::from_utf8_lossy(body).into_owned()))
}

fn answered(method: &str, path: &str, status: u16, body: String) -> Result<String, Error> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["fault_message"].as_str().map(str::to_string))
        .unwrap_or(body);
    Err(Error::Refused {
        method: method.into(),
        path: path.into(),
        status,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_into_a_body_or_the_fault_message() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse(ok), Some((200, "{}".into())));
        assert_eq!(parse(&ok[..ok.len() - 1]), None);
        let fault = br#"HTTP/1.1 400 Bad Request
Content-Length: 22

{"fault_message":"no"}"#;
        let fault = String::from_utf8_lossy(fault).replace('\n', "\r\n");
        let (status, body) = parse(fault.as_bytes()).unwrap();
        let err = answered("PUT", "/x", status, body).unwrap_err();
        assert_eq!(err.to_string(), "PUT /x: 400: no");
    }
}
