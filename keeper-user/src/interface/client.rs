//! The client side of the control socket, for the CLI: one typed request, one typed answer.
//! Blocking (a request is one line each way), so the commands that talk to the keeper need no
//! async runtime.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use super::{Answer, Request};

/// Longest the keeper may take to answer (an interaction waits for its freezes to be
/// confirmed; a reload reads and applies the policy).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: an answer that cannot be read ({error}): {line}")]
    BadAnswer {
        path: PathBuf,
        error: serde_json::Error,
        line: String,
    },
}

/// Sends `request` to the keeper listening on `path`; its answer as `T`, or its refusal.
pub fn call<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<Answer<T>, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(ANSWER_WITHIN)).map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|error| ClientError::BadAnswer {
        path: path.to_path_buf(),
        error,
        line: answer.trim().to_string(),
    })
}
