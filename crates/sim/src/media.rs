//! Each device's local storage (a drive's flash, a GPU's own memory as seen
//! by its copy engine): sparse, [`crate::SimConfig::media_size`] bytes per
//! function, created on first use. The CPU reaches it with
//! [`SimMachine::media_read`]/[`SimMachine::media_write`], DMA with
//! [`SimMachine::media_to_memory`]/[`SimMachine::memory_to_media`].

use crate::error::AccessError;
use crate::memory::{Store, Unwritten};
use crate::SimMachine;
use peerdma_mem::Bdf;
use peerdma_pci::FnId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The media of every function.
pub(crate) struct Media {
    size: u64,
    stores: Mutex<HashMap<FnId, Arc<Store>>>,
}

impl Media {
    pub(crate) fn new(size: u64) -> Media {
        Media {
            size,
            stores: Mutex::new(HashMap::new()),
        }
    }

    fn store(&self, f: FnId) -> Arc<Store> {
        let mut m = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            m.entry(f)
                .or_insert_with(|| Arc::new(Store::new(self.size))),
        )
    }
}

impl SimMachine {
    /// `dev`'s media, checked to hold `[offset, offset + len)`.
    pub(crate) fn media_range(
        &self,
        dev: Bdf,
        offset: u64,
        len: u64,
    ) -> Result<Arc<Store>, AccessError> {
        let store = self.media.store(self.id(dev)?);
        if !store.holds(offset, len) {
            return Err(AccessError::Media {
                device: dev,
                offset,
                len,
                size: store.size(),
            });
        }
        Ok(store)
    }

    /// Write to a device's media, outside any DMA.
    pub fn media_write(&self, dev: Bdf, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        self.media_range(dev, offset, data.len() as u64)?
            .write(offset, data);
        Ok(())
    }

    /// The whole media of `dev` now holds [`crate::pattern`] data of
    /// `seed` (what was written before is gone): a drive full of known
    /// data that costs memory only where it is overwritten.
    pub fn fill_media_pattern(&self, dev: Bdf, seed: u64) -> Result<(), AccessError> {
        self.media
            .store(self.id(dev)?)
            .reset(Unwritten::Pattern(seed));
        Ok(())
    }

    /// Read a device's media, outside any DMA.
    pub fn media_read(&self, dev: Bdf, offset: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        self.media_range(dev, offset, buf.len() as u64)?
            .read(offset, buf);
        Ok(())
    }
}
