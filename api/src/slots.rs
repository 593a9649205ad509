//! Slots per client: a bounded resource that every client shares and none may take whole.
//! Uploads streaming at once (`MAX_CONCURRENT_UPLOADS`, `MAX_UPLOADS_PER_CLIENT`) and event
//! streams open at once (`MAX_EVENT_STREAMS`, `MAX_EVENT_STREAMS_PER_CLIENT`) each have a table,
//! so one client (or one slow attacker) can never hold every slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::client_id::ClientId;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// Every slot is taken.
    Full,
    /// This client holds its share already.
    ClientFull,
}

/// The slot table, shared by every request.
#[derive(Debug, Clone)]
pub struct ClientSlots {
    inner: Arc<Mutex<Table>>,
}

#[derive(Debug)]
struct Table {
    /// The gauge that shows the slots in use.
    gauge: &'static str,
    total: u32,
    in_use: u32,
    by_client: HashMap<ClientId, u32>,
}

/// One slot; given back on drop.
#[derive(Debug)]
pub struct ClientSlot {
    slots: ClientSlots,
    client: Option<ClientId>,
}

impl ClientSlots {
    /// `total` slots, in use shown by the gauge `gauge`.
    pub fn new(gauge: &'static str, total: u32) -> Self {
        ClientSlots {
            inner: Arc::new(Mutex::new(Table { gauge, total, in_use: 0, by_client: HashMap::new() })),
        }
    }

    /// Takes a slot for `client`, who may hold `per_client` (its quota; unknown clients share
    /// only the global bound).
    pub fn try_acquire(&self, client: Option<ClientId>, per_client: u32) -> Result<ClientSlot, SlotRefusal> {
        let mut table = self.inner.lock().expect("slot table lock");
        if table.in_use >= table.total {
            return Err(SlotRefusal::Full);
        }
        if let Some(client) = client {
            let held = table.by_client.entry(client).or_insert(0);
            if *held >= per_client {
                return Err(SlotRefusal::ClientFull);
            }
            *held += 1;
        }
        table.in_use += 1;
        metrics::gauge!(table.gauge).set(f64::from(table.in_use));
        Ok(ClientSlot { slots: self.clone(), client })
    }

    /// Sets the gauge to the slots in use now (every few seconds, by
    /// [`crate::readiness::ReadinessGauges`]: it shows before the first slot is ever taken).
    pub fn show(&self) {
        let table = self.inner.lock().expect("slot table lock");
        metrics::gauge!(table.gauge).set(f64::from(table.in_use));
    }

    /// Slots in use now.
    pub fn in_use(&self) -> u32 {
        self.inner.lock().expect("slot table lock").in_use
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut table = self.slots.inner.lock().expect("slot table lock");
        table.in_use -= 1;
        metrics::gauge!(table.gauge).set(f64::from(table.in_use));
        if let Some(client) = self.client
            && let Some(held) = table.by_client.get_mut(&client)
        {
            *held -= 1;
            if *held == 0 {
                table.by_client.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_cannot_take_every_slot_and_slots_come_back_on_drop() {
        let slots = ClientSlots::new("test_slots_in_use", 4);
        let a = ClientId::from_peer("10.0.0.1".parse().unwrap());
        let b = ClientId::from_peer("10.0.0.2".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| slots.try_acquire(Some(a), 3).unwrap()).collect();
        assert_eq!(slots.try_acquire(Some(a), 3).unwrap_err(), SlotRefusal::ClientFull);
        let other = slots.try_acquire(Some(b), 3).unwrap();
        assert_eq!(slots.try_acquire(Some(b), 3).unwrap_err(), SlotRefusal::Full);
        drop(held);
        assert_eq!(slots.in_use(), 1);
        drop(other);
        assert_eq!(slots.in_use(), 0);
        assert!(slots.inner.lock().unwrap().by_client.is_empty(), "no entry outlives its slots");
    }
}
