//! virtio-blk (virtio 1.2, 5.2) over a raw image file: read, write, flush (fdatasync), get-id,
//! discard and write-zeroes (holes punched in the image). A read-only disk answers anything that
//! would change it with an I/O error status.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use virtio_queue::{Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{Chain, TYPE_BLOCK, VirtioDevice, complete_chains, serve_suppressed};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
/// Bytes moved per read/write call while serving one request.
const CHUNK: usize = 256 * 1024;

pub const F_RO: u64 = 1 << 5;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const ID_LEN: usize = 20;
/// Segments in one discard or write-zeroes request, at most.
const MAX_SEGMENTS: u32 = 16;

/// The image a virtio-blk device serves.
pub struct Disk {
    file: File,
    read_only: bool,
    sectors: u64,
    id: [u8; ID_LEN],
    /// One bounce buffer for every request (allocated once: at 256 KiB a fresh one per request
    /// would be an mmap and munmap each time). Uncontended: one device serves one disk.
    scratch: std::sync::Mutex<Vec<u8>>,
}

impl Disk {
    pub fn open(path: &Path, read_only: bool, id: &str) -> std::io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let sectors = file.metadata()?.len() / SECTOR_SIZE;
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            read_only,
            sectors,
            id: id_bytes,
            scratch: std::sync::Mutex::new(vec![0u8; CHUNK]),
        })
    }

    /// The byte range of `count` bytes at `sector`, if it lies inside the disk.
    fn range(&self, sector: u64, count: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(count)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(start)
    }

    fn read_into(&self, sector: u64, out: &mut Writer<'_>) -> Result<(), u8> {
        let mut offset = self
            .range(sector, out.available_bytes() as u64)
            .ok_or(S_IOERR)?;
        let mut buf = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        while out.available_bytes() > 0 {
            let n = out.available_bytes().min(buf.len());
            self.file
                .read_exact_at(&mut buf[..n], offset)
                .map_err(|_| S_IOERR)?;
            out.write_all(&buf[..n]).map_err(|_| S_IOERR)?;
            offset += n as u64;
        }
        Ok(())
    }

    fn write_from(&self, sector: u64, input: &mut Reader<'_>) -> Result<(), u8> {
        if self.read_only {
            return Err(S_IOERR);
        }
        let mut offset = self
            .range(sector, input.available_bytes() as u64)
            .ok_or(S_IOERR)?;
        let mut buf = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        while input.available_bytes() > 0 {
            let n = input.available_bytes().min(buf.len());
            input.read_exact(&mut buf[..n]).map_err(|_| S_IOERR)?;
            self.file
                .write_all_at(&buf[..n], offset)
                .map_err(|_| S_IOERR)?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Discard and write-zeroes both punch holes: a hole reads as zeros.
    fn punch(&self, segments: &mut Reader<'_>) -> Result<(), u8> {
        if self.read_only {
            return Err(S_IOERR);
        }
        let count = segments.available_bytes() / 16;
        if count == 0 || count > MAX_SEGMENTS as usize {
            return Err(S_IOERR);
        }
        for _ in 0..count {
            let seg: [u8; 16] = segments.read_obj().map_err(|_| S_IOERR)?;
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let len = u64::from(u32::from_le_bytes(
                seg[8..12].try_into().unwrap_or_default(),
            )) * SECTOR_SIZE;
            let start = self.range(sector, len).ok_or(S_IOERR)?;
            let (Ok(start), Ok(len)) = (libc::off_t::try_from(start), libc::off_t::try_from(len))
            else {
                return Err(S_IOERR);
            };
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on our own open file; no memory is passed.
            if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, start, len) } != 0 {
                return Err(S_IOERR);
            }
        }
        Ok(())
    }

    /// Serve one request; returns the status byte and the data bytes written to the guest.
    fn serve(
        &self,
        kind: u32,
        sector: u64,
        req: &mut Reader<'_>,
        data: &mut Writer<'_>,
    ) -> (u8, usize) {
        let result = match kind {
            T_IN => self.read_into(sector, data),
            T_OUT => self.write_from(sector, req),
            T_FLUSH if self.read_only => Ok(()),
            T_FLUSH => self.file.sync_data().map_err(|_| S_IOERR),
            T_GET_ID => {
                let n = data.available_bytes().min(ID_LEN);
                data.write_all(&self.id[..n]).map_err(|_| S_IOERR)
            }
            T_DISCARD | T_WRITE_ZEROES => self.punch(req),
            _ => Err(S_UNSUPP),
        };
        (result.err().unwrap_or(S_OK), data.bytes_written())
    }
}

/// Serve one descriptor chain: a 16-byte header (type, reserved, sector) in readable
/// descriptors, then the data, then a one-byte status in the last writable byte. Returns the
/// bytes written to guest memory, or None when the chain has no room for a status.
pub fn serve_chain(disk: &Disk, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Option<u32> {
    let mut req = Reader::new(mem, chain.clone()).ok()?;
    let mut data = Writer::new(mem, chain).ok()?;
    let room = data.available_bytes().checked_sub(1)?;
    let mut status_out = data.split_at(room).ok()?;
    let (status, written) = match req.read_obj::<[u8; 16]>() {
        Ok(h) => {
            let kind = u32::from_le_bytes(h[0..4].try_into().unwrap_or_default());
            let sector = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
            disk.serve(kind, sector, &mut req, &mut data)
        }
        Err(_) => (S_IOERR, 0),
    };
    status_out.write_all(&[status]).ok()?;
    u32::try_from(written + 1).ok()
}

/// Serve every available chain; returns how many were completed.
pub fn serve_queue(disk: &Disk, queue: &mut Queue, mem: &GuestMemoryMmap) -> usize {
    complete_chains(queue, mem, |chain| {
        serve_chain(disk, mem, chain).unwrap_or(0)
    })
}

pub struct Block {
    disk: Disk,
    config: [u8; 60],
    active: Option<(GuestMemoryMmap, Queue)>,
}

impl Block {
    pub fn new(disk: Disk) -> Self {
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&disk.sectors.to_le_bytes()); // capacity
        let max_sectors = u32::MAX / 512;
        config[36..40].copy_from_slice(&max_sectors.to_le_bytes()); // max_discard_sectors
        config[40..44].copy_from_slice(&MAX_SEGMENTS.to_le_bytes()); // max_discard_seg
        config[44..48].copy_from_slice(&1u32.to_le_bytes()); // discard_sector_alignment
        config[48..52].copy_from_slice(&max_sectors.to_le_bytes()); // max_write_zeroes_sectors
        config[52..56].copy_from_slice(&MAX_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        Self {
            disk,
            config,
            active: None,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only {
            F_RO
        } else {
            F_DISCARD | F_WRITE_ZEROES
        };
        F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| self.config.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, mut queues: Vec<Queue>, _features: u64) {
        if let Some(queue) = queues.pop() {
            self.active = Some((mem, queue));
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn active_queues(&self) -> Vec<&Queue> {
        self.active.iter().map(|(_, q)| q).collect()
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match (&mut self.active, index) {
            (Some((mem, queue)), 0) => {
                let disk = &self.disk;
                serve_suppressed(queue, mem, |q| serve_queue(disk, q, mem))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = 2; // VRING_DESC_F_WRITE
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x12_0000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn disk(name: &str, sectors: u64, read_only: bool) -> (Disk, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("gureum-blk-{}-{name}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(sectors * SECTOR_SIZE)
            .unwrap();
        (Disk::open(&path, read_only, "disk-id-1").unwrap(), path)
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Run one chain; returns (status byte, used length).
    fn run(disk: &Disk, mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u8, u32) {
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mq = MockSplitQueue::new(mem, 16);
        mq.build_desc_chain(descs).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        assert_eq!(serve_queue(disk, &mut q, mem), 1);
        let len = mq.used().ring().ref_at(0).unwrap().load().len();
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    #[test]
    fn write_then_read_with_a_split_header() {
        let mem = memory();
        let (disk, path) = disk("rw", 64, false);
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        header(&mem, T_OUT, 3);
        // The header arrives in two pieces of 8 bytes.
        let out = [
            d(HDR, 8, 0),
            d(HDR + 8, 8, 0),
            d(DATA, 1024, 0),
            d(STATUS, 1, W),
        ];
        assert_eq!(run(&disk, &mem, &out), (S_OK, 1));
        mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        header(&mem, T_IN, 3);
        assert_eq!(
            run(
                &disk,
                &mem,
                &[d(HDR, 16, 0), d(DATA, 1024, W), d(STATUS, 1, W)]
            ),
            (S_OK, 1025)
        );
        let mut back = vec![0u8; 1024];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[3 * 512..3 * 512 + 1024], &pattern[..]);
        header(&mem, T_FLUSH, 0);
        assert_eq!(run(&disk, &mem, &[d(HDR, 16, 0), d(STATUS, 1, W)]).0, S_OK);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn discard_and_write_zeroes_read_back_as_zeros() {
        let mem = memory();
        let (disk, path) = disk("discard", 64, false);
        std::fs::write(&path, vec![0xabu8; 64 * 512]).unwrap();
        for kind in [T_DISCARD, T_WRITE_ZEROES] {
            let mut seg = [0u8; 16];
            seg[0..8].copy_from_slice(&8u64.to_le_bytes());
            seg[8..12].copy_from_slice(&4u32.to_le_bytes());
            mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
            header(&mem, kind, 0);
            assert_eq!(
                run(
                    &disk,
                    &mem,
                    &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, W)]
                )
                .0,
                S_OK
            );
        }
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk[8 * 512..12 * 512].iter().all(|b| *b == 0));
        assert!(
            on_disk[..8 * 512]
                .iter()
                .chain(&on_disk[12 * 512..])
                .all(|b| *b == 0xab)
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn read_only_disks_refuse_changes_with_an_io_error() {
        let mem = memory();
        let (disk, path) = disk("ro", 8, true);
        header(&mem, T_OUT, 0);
        assert_eq!(
            run(
                &disk,
                &mem,
                &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)]
            )
            .0,
            S_IOERR
        );
        header(&mem, T_DISCARD, 0);
        assert_eq!(
            run(
                &disk,
                &mem,
                &[d(HDR, 16, 0), d(DATA, 16, 0), d(STATUS, 1, W)]
            )
            .0,
            S_IOERR
        );
        header(&mem, T_IN, 0);
        assert_eq!(
            run(
                &disk,
                &mem,
                &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]
            )
            .0,
            S_OK
        );
        assert_ne!(Block::new(disk).features() & F_RO, 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn get_id_and_unknown_requests() {
        let mem = memory();
        let (disk, path) = disk("id", 8, false);
        header(&mem, T_GET_ID, 0);
        assert_eq!(
            run(
                &disk,
                &mem,
                &[d(HDR, 16, 0), d(DATA, 20, W), d(STATUS, 1, W)]
            ),
            (S_OK, 21)
        );
        let mut id = [0u8; 9];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"disk-id-1");
        header(&mem, 99, 0);
        assert_eq!(
            run(&disk, &mem, &[d(HDR, 16, 0), d(STATUS, 1, W)]).0,
            S_UNSUPP
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn hostile_requests_get_an_error_status_or_are_dropped() {
        let mem = memory();
        let (disk, path) = disk("hostile", 8, false);
        // Past the end of the disk, and a sector number that overflows.
        for sector in [8, u64::MAX / 4] {
            header(&mem, T_IN, sector);
            assert_eq!(
                run(
                    &disk,
                    &mem,
                    &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]
                )
                .0,
                S_IOERR
            );
        }
        // The header in a write-only buffer: no readable header at all.
        assert_eq!(
            run(&disk, &mem, &[d(HDR, 16, W), d(STATUS, 1, W)]).0,
            S_IOERR
        );
        // A header shorter than 16 bytes.
        assert_eq!(
            run(&disk, &mem, &[d(HDR, 12, 0), d(STATUS, 1, W)]).0,
            S_IOERR
        );
        // No writable byte for the status: dropped with nothing written.
        assert_eq!(run(&disk, &mem, &[d(HDR, 16, 0), d(DATA, 16, 0)]).1, 0);
        // Buffers outside guest memory: dropped.
        assert_eq!(
            run(&disk, &mem, &[d(0xffff_0000_0000, 16, 0), d(STATUS, 1, W)]).1,
            0
        );
        // A huge length: the chain does not fit in guest memory and is dropped.
        header(&mem, T_IN, 0);
        assert_eq!(
            run(
                &disk,
                &mem,
                &[d(HDR, 16, 0), d(DATA, u32::MAX, W), d(STATUS, 1, W)]
            )
            .1,
            0
        );
        // Too many discard segments.
        header(&mem, T_DISCARD, 0);
        let many = 16 * (MAX_SEGMENTS + 1);
        assert_eq!(
            run(
                &disk,
                &mem,
                &[d(HDR, 16, 0), d(DATA, many, 0), d(STATUS, 1, W)]
            )
            .0,
            S_IOERR
        );
        std::fs::remove_file(path).unwrap();
    }
}
