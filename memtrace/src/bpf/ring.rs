//! A ring buffer a kernel object sends records over, taken out of the object and awaited
//! through tokio: records are read from its shared memory, with no system call.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::io::{Interest, unix::AsyncFd};

pub struct Ring {
    name: &'static str,
    ring: AsyncFd<RingBuf<MapData>>,
}

impl Ring {
    /// Takes the ring buffer map `name` out of the object (so within a tokio runtime).
    pub fn open(ebpf: &mut Ebpf, name: &'static str) -> anyhow::Result<Ring> {
        let map = ebpf
            .take_map(name)
            .with_context(|| format!("the BPF object has no {name} map"))?;
        let ring = RingBuf::try_from(map).with_context(|| format!("{name} map"))?;
        // SAFETY: the AsyncFd owns the ring buffer, and with it the map's descriptor, which
        // stays open and the same for the AsyncFd's whole life.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|err| err.into_parts().1)
            .with_context(|| format!("watch the {name} ring buffer"))?;
        Ok(Ring { name, ring })
    }

    /// Resolves when the kernel has signalled records (perhaps drained since: a drain needs no
    /// signal). The signal is cleared before the caller drains, so that a record sent after
    /// the drain wakes it again. Cancel-safe.
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        let name = self.name;
        let mut ready = self
            .ring
            .readable_mut()
            .await
            .with_context(|| format!("wait for {name}"))?;
        ready.clear_ready();
        Ok(())
    }

    /// Hands the records waiting to `each`, in order, at most `max`; returns how many.
    pub fn drain(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while n < max {
            let Some(item) = ring.next() else { break };
            each(&item);
            n += 1;
        }
        n
    }
}
