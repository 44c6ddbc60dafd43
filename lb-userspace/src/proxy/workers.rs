//! The proxy's worker threads: each runs a current-thread tokio runtime, and every worker
//! accepts on every listening socket (a duplicate of its descriptor registered with the
//! worker's own epoll), as nginx's workers do without `reuseport`. A connection is served
//! start to end by the worker that accepted it, so a request wakes no other thread: a
//! multi-thread runtime confined to one CPU woke the other CPU about once per request.
//!
//! One socket per address keeps the hand-over to a successor ([`super::handover`]) one
//! descriptor per listener whatever the worker count on either side. What the workers share
//! (routes, limits, counters) is in [`super::Shared`], behind atomics and `ArcSwap`.

use std::{future::Future, io, os::fd::BorrowedFd};

use tokio::{net::TcpListener, runtime::Handle, sync::oneshot, task::JoinHandle};

/// The CPUs this process may run on (its affinity mask, and a cgroup's CPU quota).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Running worker threads. Dropping this stops them: their tasks (connections included) are
/// dropped on their own threads, which are not waited for.
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender ends its worker's `block_on`.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads named `sluice-proxy-N`.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("sluice-proxy-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    runtime.shutdown_background();
                })?;
            stops.push(stop);
        }
        Ok(Workers {
            handles,
            _stops: stops,
        })
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs the task `make()` makes on every worker, for as long as the worker runs.
    pub fn spawn_each<F, Fut>(&self, make: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        for handle in &self.handles {
            handle.spawn(make());
        }
    }

    /// Runs `accept(listener)` on every worker, each with its own duplicate of `socket`
    /// registered with that worker's epoll. All or nothing: on an error (no descriptors or
    /// memory left) the tasks spawned so far are aborted.
    pub fn serve<F, Fut>(
        &self,
        socket: BorrowedFd<'_>,
        mut accept: F,
    ) -> io::Result<Vec<JoinHandle<()>>>
    where
        F: FnMut(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            let registered = socket.try_clone_to_owned().and_then(|fd| {
                let _entered = handle.enter();
                TcpListener::from_std(std::net::TcpListener::from(fd))
            });
            match registered {
                Ok(listener) => tasks.push(handle.spawn(accept(listener))),
                Err(e) => {
                    for task in &tasks {
                        task.abort();
                    }
                    return Err(e);
                }
            }
        }
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        collections::BTreeSet,
        io::Read,
        os::fd::AsFd,
        sync::{Arc, Mutex},
        time::Duration,
    };

    /// Every worker accepts on the one socket, on its own thread; a connection is answered
    /// with the name of the thread that accepted it.
    #[test]
    fn connections_on_the_shared_socket_are_served_on_worker_threads() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.count(), 2);
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let tasks = workers
            .serve(socket.as_fd(), |listener| {
                let seen = Arc::clone(&seen);
                async move {
                    loop {
                        let Ok((mut stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let name = std::thread::current().name().unwrap().to_string();
                        seen.lock().unwrap().insert(name.clone());
                        use tokio::io::AsyncWriteExt;
                        let _ = stream.write_all(name.as_bytes()).await;
                    }
                }
            })
            .unwrap();
        assert_eq!(tasks.len(), 2);
        // Which worker wins an accept is the kernel's choice (and the scheduler's).
        for _ in 0..20 {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut name = String::new();
            stream.read_to_string(&mut name).unwrap();
            assert!(name.starts_with("sluice-proxy-"), "{name:?}");
        }
        let seen = seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|n| n.starts_with("sluice-proxy-")),
            "{seen:?}"
        );
        for task in &tasks {
            task.abort();
        }
        drop(workers);
    }
}
