//! The GPU read off the loop: NVML calls take milliseconds and can hang in the driver (a GPU
//! fallen off the bus, a driver reload), so a thread of their own (`keeper-gpu`, at normal
//! priority) makes each readout, on the loop's request. The loop waits for the answer a
//! short while ([`GPU_WAIT`]), then goes on with the readout it has; an answer that has not
//! come for [`GPU_HUNG`] makes the GPU unreadable (GPU rules still) until one comes.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use crate::device::gpu::{Gpu, GpuError, GpuReadout};

/// How long the loop waits for a readout it asked for.
pub const GPU_WAIT: Duration = Duration::from_millis(25);
/// An unanswered readout this old: NVML hangs.
pub const GPU_HUNG: Duration = Duration::from_secs(2);

/// What asking for a readout came to.
pub enum Read {
    /// The readout (or NVML's error) just made.
    Fresh(Result<GpuReadout, GpuError>),
    /// Asked; not answered yet.
    Pending,
    /// Asked this long ago and not answered: NVML hangs.
    Hung(Duration),
}

/// The thread that reads the GPU, and the way to it.
pub struct GpuReader {
    gpu: Arc<Gpu>,
    ask: mpsc::Sender<()>,
    answers: mpsc::Receiver<Result<GpuReadout, GpuError>>,
    asked_at: Option<Instant>,
}

impl GpuReader {
    /// Starts the thread for `gpu`; it ends once the reader is dropped (and, if NVML hangs,
    /// when the call returns).
    pub fn start(gpu: Arc<Gpu>) -> std::io::Result<GpuReader> {
        let (ask, asks) = mpsc::channel::<()>();
        let (tell, answers) = mpsc::channel();
        let on_thread = gpu.clone();
        std::thread::Builder::new()
            .name("keeper-gpu".into())
            .spawn(move || {
                crate::device::run_at_normal_priority();
                for () in asks {
                    if tell.send(on_thread.readout()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(GpuReader {
            gpu,
            ask,
            answers,
            asked_at: None,
        })
    }

    /// Whether this reader reads `gpu`.
    pub fn reads(&self, gpu: &Arc<Gpu>) -> bool {
        Arc::ptr_eq(&self.gpu, gpu)
    }

    /// Asks for a readout (unless one is asked already) and waits up to `wait` for it.
    pub fn read(&mut self, wait: Duration) -> Read {
        let asked = match self.asked_at {
            Some(at) => at,
            None => {
                if self.ask.send(()).is_err() {
                    return Read::Hung(Duration::ZERO); // the thread is gone
                }
                *self.asked_at.insert(Instant::now())
            }
        };
        match self.answers.recv_timeout(wait) {
            Ok(r) => {
                self.asked_at = None;
                Read::Fresh(r)
            }
            Err(mpsc::RecvTimeoutError::Timeout) if asked.elapsed() < GPU_HUNG => Read::Pending,
            Err(_) => Read::Hung(asked.elapsed()),
        }
    }
}
