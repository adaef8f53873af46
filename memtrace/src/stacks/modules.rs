//! The unwind tables of the files processes map: `.eh_frame` (with its `.eh_frame_hdr` index),
//! or `.debug_frame`, read once per file and shared by every process that maps it.

use std::{collections::HashMap, fs::File, ops::Range, path::Path, sync::Arc};

use framehop::ExplicitModuleSectionInfo;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ReadCache};

/// Section bytes, shared by the modules of every process that maps the file.
pub type Bytes = Arc<[u8]>;

/// What unwinding needs from one ELF file.
pub struct ModuleFile {
    pub sections: ExplicitModuleSectionInfo<Bytes>,
    /// Loadable segments: file range and the address the file says they load at.
    segments: Vec<(Range<u64>, u64)>,
    /// The entry point (`_start`): the root of every stack of a process's main thread.
    pub entry: u64,
}

impl ModuleFile {
    /// Reads the unwind sections of an ELF file, only those (large files are not read whole).
    pub fn read(path: &Path) -> Option<ModuleFile> {
        let file = File::open(path).ok()?;
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache).ok()?;
        let section = |name: &str| {
            let section = elf.section_by_name(name)?;
            Some((
                section.address()..section.address() + section.size(),
                section.data().ok().map(Bytes::from),
            ))
        };
        // The code itself is not read: framehop would analyse instructions only where unwind
        // tables say nothing, and reading a large library's text (librustc_driver: 100 MB) stalls
        // the teaching long enough for the kernel's ring to overflow.
        let text_svma = elf
            .section_by_name(".text")
            .map(|text| text.address()..text.address() + text.size());
        let (eh_frame_svma, eh_frame) = section(".eh_frame").unzip();
        let (eh_frame_hdr_svma, eh_frame_hdr) = section(".eh_frame_hdr").unzip();
        let got_svma = section(".got").map(|(range, _)| range);
        let debug_frame = section(".debug_frame").and_then(|(_, data)| data);
        let segments = elf
            .segments()
            .map(|segment| {
                let (offset, size) = segment.file_range();
                (offset..offset + size, segment.address())
            })
            .collect();
        Some(ModuleFile {
            sections: ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma,
                text: None,
                got_svma,
                eh_frame_svma,
                eh_frame: eh_frame.flatten(),
                eh_frame_hdr_svma,
                eh_frame_hdr: eh_frame_hdr.flatten(),
                debug_frame,
                ..Default::default()
            },
            segments,
            entry: elf.entry(),
        })
    }

    /// Where the file's address 0 is in a process that maps `offset` of it at `start`. The
    /// mapping begins at a page boundary, which may lie in the previous segment's last page: the
    /// segment is the last one whose pages hold `offset`.
    pub fn base_address(&self, start: u64, offset: u64) -> Option<u64> {
        let (file_range, address) = self.segments.iter().rev().find(|(file_range, _)| {
            (file_range.start & !(PAGE - 1)..file_range.end).contains(&offset)
        })?;
        let svma = (address + offset).checked_sub(file_range.start)?;
        start.checked_sub(svma)
    }
}

/// Pages are the unit of mappings.
const PAGE: u64 = 4096;

/// Files read so far, by the path they were opened at and their inode.
#[derive(Default)]
pub struct ModuleFiles {
    files: HashMap<(String, u64), Option<Arc<ModuleFile>>>,
}

impl ModuleFiles {
    /// The file's unwind tables; `None` (remembered) if it cannot be read as ELF.
    pub fn get(&mut self, path: &str, inode: u64) -> Option<Arc<ModuleFile>> {
        self.files
            .entry((path.to_owned(), inode))
            .or_insert_with(|| ModuleFile::read(Path::new(path)).map(Arc::new))
            .clone()
    }
}
