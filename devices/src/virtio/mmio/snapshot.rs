//! A transport's state for a snapshot, and its restore.

use super::super::state::{RestoreError, TransportSnapshot};
use super::super::{INT_CONFIG, INT_USED_RING};
use super::{MmioTransport, STATUS_DRIVER_OK, STATUS_NEEDS_RESET};
use crate::bus::lock;

impl MmioTransport {
    fn started(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    /// Its state, for a snapshot; an error says why the device cannot be saved now.
    pub fn snapshot(&self) -> Result<TransportSnapshot, String> {
        let device = lock(&self.device);
        if let Some(why) = device.snapshot_refusal() {
            return Err(why);
        }
        let queues: Vec<_> = match self.started() {
            true => device.active_queues().into_iter().map(Into::into).collect(),
            false => self.queues.iter().map(Into::into).collect(),
        };
        // A started device that does not report its queues cannot be restored from them.
        if queues.len() != device.queue_max_sizes().len() {
            return Err(format!(
                "the device of type {} does not report its queues",
                self.device_type
            ));
        }
        Ok(TransportSnapshot {
            device_type: self.device_type,
            status: self.status,
            driver_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            refused: self.refused.clone(),
            queues,
            lost: self.started() && device.snapshot_loses(),
        })
    }

    /// Tells the driver the device's configuration changed (a restored disk that is another
    /// image, another size): a config interrupt, and a new generation.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.started() {
            self.interrupt.signal(INT_CONFIG);
        }
    }

    /// Puts this (fresh) transport, and its device, in the state `s` recorded; `slot` names
    /// the device in errors. A started device is started again with its saved queues, told it
    /// was restored, and serves whatever the driver had queued (a notification may have been
    /// pending).
    pub fn restore(&mut self, slot: usize, s: &TransportSnapshot) -> Result<(), RestoreError> {
        if s.device_type != self.device_type {
            return Err(RestoreError::DeviceType {
                slot,
                found: s.device_type,
                want: self.device_type,
            });
        }
        let want = lock(&self.device).queue_max_sizes().len();
        if s.queues.len() != want || s.refused.len() != want {
            return Err(RestoreError::QueueCount {
                slot,
                found: s.queues.len(),
                want,
            });
        }
        let queues = (s.queues.iter())
            .map(|q| q.queue().map_err(|_| RestoreError::BadQueue { slot }))
            .collect::<Result<Vec<_>, _>>()?;
        self.status = s.status;
        self.driver_features = s.driver_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.config_generation = s.config_generation;
        self.refused = s.refused.clone();
        self.interrupt.restore(s.interrupt_status);
        if self.started() {
            let mut device = lock(&self.device);
            device.activate(self.mem.clone(), queues, self.driver_features);
            let restored = device.restored(s.lost);
            let used = (0..want).fold(restored, |used, q| device.process_queue(q) | used);
            if used {
                self.interrupt.signal(INT_USED_RING);
            }
        } else {
            self.queues = queues;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::virtio::F_VERSION_1;
    use virtio_queue::QueueT;

    #[test]
    fn a_started_device_restores_started_with_its_queues_where_they_were() {
        let (mut t, _) = setup();
        drive(&mut t, F_VERSION_1 | 1 << 3, 8);
        w(&mut t, 0x070, ALL);
        let saved = t.snapshot().unwrap();
        assert_eq!(saved.queues.len(), 2);
        assert_eq!(saved.queues[1].desc_table, 0x4000);

        let (mut fresh, probe) = setup();
        fresh.restore(0, &saved).unwrap();
        assert_eq!(r(&mut fresh, 0x070), ALL);
        let p = lock(&probe);
        assert_eq!(p.activated, Some((2, F_VERSION_1 | 1 << 3)));
        assert_eq!(p.queues[0].desc_table(), 0x1000);
        // Each queue is served once, for a notification the snapshot may have cut off.
        assert_eq!(p.served, [0, 1]);
        drop(p);
        assert_eq!(fresh.snapshot().unwrap(), saved);

        // A transport not yet started comes back as it was, its queues still the driver's.
        let (mut half, _) = setup();
        drive(&mut half, F_VERSION_1, 8);
        let saved = half.snapshot().unwrap();
        let (mut fresh, probe) = setup();
        fresh.restore(0, &saved).unwrap();
        assert_eq!(lock(&probe).activated, None);
        assert_eq!(fresh.snapshot().unwrap(), saved);
    }

    #[test]
    fn a_snapshot_of_another_device_or_shape_is_refused() {
        let (t, _) = setup();
        let mut other = t.snapshot().unwrap();
        other.device_type = 2;
        let (mut fresh, _) = setup();
        assert_eq!(
            fresh.restore(3, &other).unwrap_err().to_string(),
            "the snapshot's device 3 is of type 2, this VM's is 42"
        );
        let mut short = t.snapshot().unwrap();
        short.queues.pop();
        assert!(matches!(
            fresh.restore(0, &short),
            Err(RestoreError::QueueCount { .. })
        ));
        let mut bad = t.snapshot().unwrap();
        bad.queues[0].size = 3;
        bad.queues[0].ready = true;
        assert_eq!(
            fresh.restore(0, &bad),
            Err(RestoreError::BadQueue { slot: 0 })
        );
    }
}
