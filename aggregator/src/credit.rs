//! Credit sizing: how much an agent may send ahead of the sink.
//!
//! Pure decisions, no I/O. Each session starts with a window (bytes and batches);
//! credit comes back as the sink reports batches durable, so the sink's commit
//! latency paces every agent. While the sink is under pressure (its queue above the
//! high-water mark, or failing), returned credit is held back and owed; it is paid
//! once the pressure is gone. Agents then spool instead of the aggregator buffering.

use ferrule_wire::Credit;

/// Credit owed to one session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CreditGate {
    owed: Credit,
}

impl CreditGate {
    /// A gate that already owes `credit`: a session that starts while the sink is
    /// under pressure gets its window only once the pressure is gone.
    pub fn owing(credit: Credit) -> Self {
        Self { owed: credit }
    }

    /// A batch of `bytes` left the sink's hands (durable, duplicate or failed):
    /// returns the grant to send now, if any.
    pub fn returned(&mut self, bytes: u64, sink_under_pressure: bool) -> Option<Credit> {
        self.owed.bytes = self.owed.bytes.saturating_add(bytes);
        self.owed.batches = self.owed.batches.saturating_add(1);
        self.poll(sink_under_pressure)
    }

    /// Called now and then: pays what is owed once the pressure is gone.
    pub fn poll(&mut self, sink_under_pressure: bool) -> Option<Credit> {
        if sink_under_pressure || self.owed == Credit::default() {
            return None;
        }
        Some(std::mem::take(&mut self.owed))
    }

    /// What is held back right now.
    pub fn owed(&self) -> Credit {
        self.owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_withheld_under_pressure_and_paid_after() {
        let mut g = CreditGate::default();
        assert_eq!(
            g.returned(100, false),
            Some(Credit {
                bytes: 100,
                batches: 1
            })
        );
        assert_eq!(g.returned(100, true), None);
        assert_eq!(g.returned(50, true), None);
        assert_eq!(
            g.owed(),
            Credit {
                bytes: 150,
                batches: 2
            }
        );
        assert_eq!(g.poll(true), None);
        assert_eq!(
            g.poll(false),
            Some(Credit {
                bytes: 150,
                batches: 2
            })
        );
        assert_eq!(g.poll(false), None);
    }
}
