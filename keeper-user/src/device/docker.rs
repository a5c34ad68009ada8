//! Docker containers through the Docker Engine API on its unix socket (bollard): the running
//! ones, their names, labels and cgroups (the engine gives a container's main pid, /proc gives
//! its cgroup). A watcher thread asks the engine every [`REFRESH`], each call under
//! [`DEADLINE`], and keeps the last answer; placements read it without waiting
//! (docs/decisions/0022-docker-containers.md).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    query_parameters::{InspectContainerOptions, ListContainersOptions},
};

/// The longest any one call to the engine may take.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// How often the watcher asks the engine again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long the first placement waits for the engine's first answer (once per process).
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// The engine's socket without `DOCKER_HOST`.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// A running container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Without the engine's leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its cgroup, relative to the v2 mount (from its main process's `/proc/PID/cgroup`).
    pub cgroup: String,
}

/// Why the engine gave no listing.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Engine(#[from] bollard::errors::Error),
    #[error("no runtime for the engine client: {0}")]
    Runtime(#[from] std::io::Error),
}

/// The engine's socket: `DOCKER_HOST` when it is a `unix://` address, else [`DEFAULT_SOCKET`].
pub fn socket_path() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string())
}

/// A call to the engine with the deadline.
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(Err(bollard::errors::Error::RequestTimeoutError)) | Err(_) => {
            Err(DockerError::Timeout(DEADLINE))
        }
        Ok(r) => Ok(r?),
    }
}

/// A client of the engine at `socket`, its API version agreed (an engine older than bollard
/// refuses newer versions). bollard 0.21 sends its paths without the version prefix all the
/// same, which every engine answers in its own current version: the calls made here (list,
/// inspect) read fields every version since 1.24 has.
pub async fn connect(socket: &str) -> Result<Docker, DockerError> {
    let docker =
        Docker::connect_with_unix(socket, DEADLINE.as_secs(), bollard::API_DEFAULT_VERSION)?;
    bounded(docker.negotiate_version()).await
}

/// The running containers. A container seen before (`known`, by id) keeps its cgroup; a new
/// one is inspected for its main pid, whose cgroup is read from /proc. One that stopped
/// between the listing and its inspection is left out.
pub async fn list(
    docker: &Docker,
    known: &HashMap<String, Container>,
) -> Result<Vec<Container>, DockerError> {
    let summaries = bounded(docker.list_containers(Some(ListContainersOptions::default()))).await?;
    let mut out = Vec::new();
    for s in summaries {
        let Some(id) = s.id else { continue };
        let name = (s.names.unwrap_or_default().into_iter().next())
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let labels: BTreeMap<String, String> = s.labels.unwrap_or_default().into_iter().collect();
        let cgroup = match known.get(&id) {
            Some(k) => k.cgroup.clone(),
            None => {
                let inspected =
                    bounded(docker.inspect_container(&id, None::<InspectContainerOptions>)).await;
                let pid = match inspected {
                    Ok(i) => i.state.and_then(|s| s.pid).unwrap_or(0),
                    Err(DockerError::Engine(
                        bollard::errors::Error::DockerResponseServerError {
                            status_code: 404, ..
                        },
                    )) => 0,
                    Err(e) => return Err(e),
                };
                let Some(cgroup) = u32::try_from(pid)
                    .ok()
                    .filter(|p| *p > 0)
                    .and_then(super::procfs::task_cgroup)
                else {
                    continue;
                };
                cgroup
            }
        };
        out.push(Container {
            id,
            name,
            labels,
            cgroup,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One listing from the engine at `socket`, on a runtime of its own (`keeper` commands, tests).
pub fn list_once(socket: &str) -> Result<Vec<Container>, DockerError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let docker = connect(socket).await?;
        list(&docker, &HashMap::new()).await
    })
}

/// What the watcher knows.
#[derive(Default)]
struct Seen {
    containers: Vec<Container>,
    /// The engine answered, or failed, at least once.
    settled: bool,
    /// The last failure said (said again only when it changes).
    failing: Option<String>,
}

struct Watch {
    seen: Mutex<Seen>,
    settled: Condvar,
}

static WATCH: OnceLock<Watch> = OnceLock::new();

/// The running containers as last seen by the watcher (started on the first call, which waits
/// up to half a second for its first answer). When the engine stops answering, its last
/// containers are kept (a container outlives a restart of its engine; placements check that
/// each cgroup still exists) and the failure is said once.
pub fn containers() -> Vec<Container> {
    let mut started = false;
    let watch = WATCH.get_or_init(|| {
        started = true;
        Watch {
            seen: Mutex::new(Seen::default()),
            settled: Condvar::new(),
        }
    });
    if started {
        let spawned = std::thread::Builder::new()
            .name("keeper-docker".into())
            .spawn(move || {
                // Spawned from the loop (SCHED_FIFO): a watcher of a socket needs no
                // real-time priority, and must not keep a CPU from the host.
                super::run_at_normal_priority();
                watch_engine(watch, &socket_path())
            });
        if let Err(e) = spawned {
            tracing::warn!("docker: no watcher thread ({e}); Docker matches find nothing");
            return vec![];
        }
    }
    let seen = watch.seen.lock().unwrap_or_else(|e| e.into_inner());
    let seen = if started {
        let wait = watch
            .settled
            .wait_timeout_while(seen, FIRST_WAIT, |s| !s.settled);
        wait.unwrap_or_else(|e| e.into_inner()).0
    } else {
        seen
    };
    seen.containers.clone()
}

/// The watcher's loop: connect (again after a failure), list, keep, sleep.
fn watch_engine(watch: &Watch, socket: &str) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(
                "docker: no runtime for the engine client ({e}); Docker matches find nothing"
            );
            return;
        }
    };
    let mut docker: Option<Docker> = None;
    loop {
        let started = Instant::now();
        let known: HashMap<String, Container> = {
            let seen = watch.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.containers
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect()
        };
        let answer = rt.block_on(async {
            let d = match docker.take() {
                Some(d) => d,
                None => connect(socket).await?,
            };
            let listed = list(&d, &known).await?;
            Ok::<_, DockerError>((d, listed))
        });
        let mut seen = watch.seen.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok((d, listed)) => {
                docker = Some(d);
                if seen.failing.take().is_some() || !seen.settled {
                    tracing::info!(
                        "docker: the engine at {socket} answers ({} running containers)",
                        listed.len()
                    );
                }
                seen.containers = listed;
            }
            Err(e) => {
                let why = e.to_string();
                if seen.failing.as_ref() != Some(&why) {
                    tracing::warn!(
                        "docker: the engine at {socket} gives no containers ({why}); Docker matches keep the {} last seen, asked again every {REFRESH:?}",
                        seen.containers.len()
                    );
                    seen.failing = Some(why);
                }
            }
        }
        seen.settled = true;
        drop(seen);
        watch.settled.notify_all();
        std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests;
