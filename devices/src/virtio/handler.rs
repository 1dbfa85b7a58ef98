//! The thin event-loop side of a virtio device: wait on the queues' ioeventfds, run the
//! device's queue logic, and raise the interrupt when the used ring changed.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{INT_USED_RING, Interrupt, VirtioDevice};
use crate::bus::lock;

pub struct VirtioHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    /// One per queue, in queue order; the VMM binds them to QueueNotify.
    queue_evts: Vec<EventFd>,
    /// The device's own descriptors (a TAP).
    extra_fds: Vec<std::os::fd::RawFd>,
}

impl VirtioHandler {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let extra_fds = lock(&device).extra_fds();
        Self {
            device,
            interrupt,
            queue_evts,
            extra_fds,
        }
    }
}

impl MutEventSubscriber for VirtioHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            // Our own eventfds; registration fails only when the epoll set cannot grow, and
            // then the queue is simply not served.
            let _ = ops.add(Events::new(evt, EventSet::IN));
        }
        for &fd in &self.extra_fds {
            let _ = ops.add(Events::new_raw(fd, EventSet::IN | EventSet::EDGE_TRIGGERED));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let used = match self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            Some(index) => {
                // Drain the notification; several coalesce into one pass over the queue.
                let _ = self.queue_evts[index].read();
                lock(&self.device).process_queue(index)
            }
            None if self.extra_fds.contains(&fd) => lock(&self.device).process_fd(fd),
            None => false,
        };
        if used {
            self.interrupt.signal(INT_USED_RING);
        }
    }
}
