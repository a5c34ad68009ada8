//! The engine client against a recorded exchange of the real engine (Debian's docker.io 20.10,
//! API 1.41, recorded with `curl --unix-socket` into tests/docker/), replayed by a fake engine
//! on a unix socket; and an engine that never answers, or is not there.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use super::*;

const VERSION: &str = include_str!("../../../../tests/docker/version.json");
const CONTAINERS: &str = include_str!("../../../../tests/docker/containers.json");
const INSPECT: &str = include_str!("../../../../tests/docker/inspect.json");
const NO_SUCH: &str = include_str!("../../../../tests/docker/no-such-container.json");
const ID: &str = "727a3a72bf1963cea9b9bd7653fc1befd41473519f5d0aae96a173261827b977";

fn socket(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keeper-docker-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("docker.sock")
}

/// A fake engine replaying the recording; the inspected container's pid is `pid` (the test
/// process, so that its cgroup can be read), or it is gone (404) when `gone`. Returns the
/// request lines it was sent.
fn replay(at: &PathBuf, pid: u32, gone: bool) -> Arc<Mutex<Vec<String>>> {
    let listener = UnixListener::bind(at).unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&asked);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                    log.lock().unwrap().push(path.clone());
                    // The version prefix (`/v1.41`) is the client's choice; the routes are not.
                    let route = match path.strip_prefix("/v1.") {
                        Some(rest) => &rest[rest.find('/').unwrap_or(0)..],
                        None => path.as_str(),
                    };
                    let inspect = INSPECT.replace("\"Pid\":16425", &format!("\"Pid\":{pid}"));
                    let (status, body) = match route.split('?').next().unwrap() {
                        "/version" => ("200 OK", VERSION.to_string()),
                        "/containers/json" => ("200 OK", CONTAINERS.to_string()),
                        r if r == format!("/containers/{ID}/json") && !gone => ("200 OK", inspect),
                        _ => ("404 Not Found", NO_SUCH.to_string()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err()
                        || conn.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    asked
}

#[test]
fn a_running_container_is_listed_with_its_name_labels_and_cgroup() {
    let at = socket("list");
    let me = std::process::id();
    let asked = replay(&at, me, false);
    let listed = list_once(at.to_str().unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(at.parent().unwrap());
    let Some(cgroup) = crate::device::procfs::task_cgroup(me) else {
        assert!(listed.is_empty(), "{listed:?}");
        return;
    };
    assert_eq!(
        listed,
        [Container {
            id: ID.into(),
            name: "eva-core".into(),
            labels: [("keeper.workload".to_string(), "muse".to_string())].into(),
            cgroup,
        }]
    );
    // The version is agreed first; bollard 0.21 then sends its paths unversioned (its `Uri`
    // joins an absolute path over the `/v1.NN` prefix), which the engine answers in its own.
    let asked = asked.lock().unwrap().clone();
    let unversioned: Vec<String> = asked
        .iter()
        .map(|p| match p.strip_prefix("/v1.") {
            Some(rest) => rest[rest.find('/').unwrap_or(0)..].to_string(),
            None => p.clone(),
        })
        .collect();
    assert_eq!(
        unversioned,
        [
            "/version".to_string(),
            "/containers/json?all=false&size=false".to_string(),
            format!("/containers/{ID}/json"),
        ]
    );
}

#[test]
fn a_container_gone_before_its_inspection_is_left_out_and_a_known_one_is_not_asked_again() {
    let at = socket("gone");
    let asked = replay(&at, std::process::id(), true);
    assert_eq!(list_once(at.to_str().unwrap()).unwrap(), []);
    // Known by id: its cgroup is kept, no inspection.
    let known = Container {
        id: ID.into(),
        name: "eva-core".into(),
        labels: BTreeMap::new(),
        cgroup: "docker/x".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = asked.lock().unwrap().len();
    let listed = rt
        .block_on(async {
            let d = connect(at.to_str().unwrap()).await?;
            list(&d, &[(ID.to_string(), known)].into()).await
        })
        .unwrap();
    let _ = std::fs::remove_dir_all(at.parent().unwrap());
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].cgroup, "docker/x");
    assert_eq!(listed[0].labels["keeper.workload"], "muse");
    let asked = asked.lock().unwrap()[before..].to_vec();
    assert!(
        !asked.iter().any(|p| p.contains(&format!("{ID}/json"))),
        "{asked:?}"
    );
}

#[test]
fn an_engine_that_never_answers_is_given_up_at_the_deadline() {
    let at = socket("hang");
    let listener = UnixListener::bind(&at).unwrap();
    // Accepts and holds every connection, answers nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().map_while(Result::ok) {
            held.push(c);
        }
    });
    let start = Instant::now();
    let err = list_once(at.to_str().unwrap()).unwrap_err();
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(at.parent().unwrap());
    assert!(matches!(err, DockerError::Timeout(_)), "{err}");
    assert!(took >= DEADLINE && took < DEADLINE * 2, "{took:?}");
}

#[test]
fn no_engine_is_an_error_at_once() {
    let at = socket("none");
    let start = Instant::now();
    let err = list_once(at.to_str().unwrap()).unwrap_err();
    let _ = std::fs::remove_dir_all(at.parent().unwrap());
    assert!(matches!(err, DockerError::Engine(_)), "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_socket_is_docker_host_when_it_is_a_unix_address() {
    // Read only: the variable is not set in the unit tests' environment.
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => assert_eq!(format!("unix://{}", socket_path()), h),
        _ => assert_eq!(socket_path(), DEFAULT_SOCKET),
    }
}
