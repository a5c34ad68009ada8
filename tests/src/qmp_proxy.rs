//! A QMP socket that stands between the keeper and a real QEMU and remembers the last
//! `balloon` target the keeper asked for. A guest-less QEMU (`-S`) never moves its balloon,
//! so `query-balloon` cannot tell whether a balloon was given back; what the keeper last
//! commanded can.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Listens at `front`, forwards each connection to `back`; `last_balloon()` is the last
/// `balloon` value (bytes) any client sent.
pub struct QmpProxy {
    front: PathBuf,
    last: Arc<Mutex<Option<u64>>>,
}

impl QmpProxy {
    pub fn start(front: &Path, back: &Path) -> QmpProxy {
        let _ = std::fs::remove_file(front);
        let listener = UnixListener::bind(front).expect("bind the QMP proxy");
        let last = Arc::new(Mutex::new(None));
        let (seen, back) = (last.clone(), back.to_path_buf());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(qemu) = UnixStream::connect(&back) else {
                    continue; // the client sees its socket closed, as with a QEMU gone
                };
                forward(client, qemu, seen.clone());
            }
        });
        QmpProxy {
            front: front.to_path_buf(),
            last,
        }
    }

    /// The last balloon target the keeper sent, in bytes; `None` if it never sent one.
    pub fn last_balloon(&self) -> Option<u64> {
        *self.last.lock().unwrap()
    }
}

impl Drop for QmpProxy {
    fn drop(&mut self) {
        // The accepting thread ends with the process; the socket file goes now.
        let _ = std::fs::remove_file(&self.front);
    }
}

/// QEMU → client as bytes; client → QEMU line by line, each `balloon` command noted.
fn forward(client: UnixStream, qemu: UnixStream, seen: Arc<Mutex<Option<u64>>>) {
    let (Ok(mut to_client), Ok(mut from_qemu)) = (client.try_clone(), qemu.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_qemu, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut to_qemu = qemu;
        for line in BufReader::new(&client).lines().map_while(Result::ok) {
            if let Some(v) = balloon_value(&line) {
                *seen.lock().unwrap() = Some(v);
            }
            if to_qemu.write_all(format!("{line}\n").as_bytes()).is_err() {
                break;
            }
        }
        let _ = to_qemu.shutdown(std::net::Shutdown::Both);
        let _ = client.shutdown(std::net::Shutdown::Both);
    });
}

fn balloon_value(line: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["execute"] == "balloon").then(|| v["arguments"]["value"].as_u64())?
}
