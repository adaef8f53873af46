//! Frames named: function and offset from the file's symbol tables, `file:line` from its debug
//! information (in the file, or a separate debug file found by build id or `.gnu_debuglink`),
//! through blazesym.

use std::{collections::HashMap, fs::File, sync::Arc};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};
use object::{Object as _, ReadCache};

use super::{Frame, Module};
use crate::model::stacks::Named;

/// Names frames, each file's frames in one batch; remembers what it named.
pub struct Symbols {
    symbolizer: Symbolizer,
    named: HashMap<Frame, Named>,
    /// Build ids by the path files are opened at.
    build_ids: HashMap<String, Option<Arc<str>>>,
    /// Frames in a file but not named by it (stripped, or unreadable once its process exited).
    pub unnamed: u64,
}

impl Default for Symbols {
    fn default() -> Self {
        Symbols {
            symbolizer: Symbolizer::builder().enable_inlined_fns(false).build(),
            named: HashMap::new(),
            build_ids: HashMap::new(),
            unnamed: 0,
        }
    }
}

impl Symbols {
    /// Names every frame of `frames` not named yet.
    pub fn resolve<'a>(&mut self, modules: &[Module], frames: impl IntoIterator<Item = &'a Frame>) {
        let mut by_module: HashMap<u32, Vec<Frame>> = HashMap::new();
        for frame in frames {
            if self.named.contains_key(frame) {
                continue;
            }
            match frame.module {
                Some(module) => {
                    let batch = by_module.entry(module).or_default();
                    if !batch.contains(frame) {
                        batch.push(*frame);
                    }
                }
                None => {
                    self.named.insert(
                        *frame,
                        Named {
                            offset: frame.offset,
                            ..Named::default()
                        },
                    );
                }
            }
        }
        for (module, frames) in by_module {
            let module = &modules[module as usize];
            if module.open_path.is_empty() {
                // A region the kernel names (`[vdso]`): no file to read symbols from.
                for frame in frames {
                    let named = Named {
                        module: Some(module.path.clone()),
                        offset: frame.offset,
                        ..Named::default()
                    };
                    self.named.insert(frame, named);
                }
                continue;
            }
            let build_id = self
                .build_ids
                .entry(module.open_path.clone())
                .or_insert_with(|| build_id(&module.open_path))
                .clone();
            // A return address is looked up inside its call: one byte before.
            let lookups: Vec<u64> = frames
                .iter()
                .map(|f| f.offset - u64::from(f.returns && f.offset > 0))
                .collect();
            let source = Source::Elf(Elf::new(&module.open_path));
            let found = self
                .symbolizer
                .symbolize(&source, Input::FileOffset(&lookups))
                .unwrap_or_default();
            for (i, frame) in frames.into_iter().enumerate() {
                let mut named = Named {
                    module: Some(module.path.clone()),
                    offset: frame.offset,
                    build_id: build_id.clone(),
                    ..Named::default()
                };
                match found.get(i) {
                    Some(Symbolized::Sym(sym)) => {
                        named.symbol = Some(sym.name.to_string());
                        named.symbol_offset = Some(sym.offset as u64 + u64::from(frame.returns));
                        if let Some(code) = &sym.code_info {
                            let file = match &code.dir {
                                Some(dir) => dir.join(&*code.file).display().to_string(),
                                None => code.file.to_string_lossy().into_owned(),
                            };
                            named.file = Some(file);
                            named.line = code.line;
                        }
                    }
                    _ => self.unnamed += 1,
                }
                self.named.insert(frame, named);
            }
        }
    }

    /// Stack `id`'s frames, named, innermost first.
    pub fn stack(&mut self, stacks: &super::Stacks, id: super::StackId) -> Vec<Named> {
        let frames = &stacks.stack(id).frames;
        self.resolve(stacks.modules(), frames);
        frames.iter().map(|frame| self.named(frame)).collect()
    }

    /// A frame as named by [`Symbols::resolve`].
    pub fn named(&self, frame: &Frame) -> Named {
        self.named.get(frame).cloned().unwrap_or(Named {
            offset: frame.offset,
            ..Named::default()
        })
    }
}

/// The GNU build id of an ELF file, in hex, from its notes (only those are read).
fn build_id(path: &str) -> Option<Arc<str>> {
    let file = File::open(path).ok()?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    Some(hex(id).into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The running kernel's build id, from its notes as `/sys/kernel/notes` has them.
fn kernel_build_id() -> Option<Arc<str>> {
    let notes = std::fs::read("/sys/kernel/notes").ok()?;
    gnu_build_id(&notes).map(|id| hex(id).into())
}

/// The descriptor of the `GNU` note of type 3 (`NT_GNU_BUILD_ID`) among ELF notes: each a name
/// size, a descriptor size and a type (native-endian words), then the name and the descriptor,
/// each padded to four bytes.
fn gnu_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |bytes: &[u8], at: usize| -> Option<usize> {
        let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_ne_bytes(word)).ok()
    };
    let padded = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let (name_len, desc_len, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let name = notes.get(12..12 + name_len)?;
        let desc_at = 12 + padded(name_len);
        let desc = notes.get(desc_at..desc_at + desc_len)?;
        if kind == NT_GNU_BUILD_ID as usize && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_at + padded(desc_len)..)?;
    }
    None
}

/// Kernel frames named from `/proc/kallsyms` (readable in full as root).
pub struct KernelSymbols {
    symbolizer: Symbolizer,
    build_id: Option<Arc<str>>,
}

impl Default for KernelSymbols {
    fn default() -> Self {
        KernelSymbols {
            symbolizer: Symbolizer::builder().enable_code_info(false).build(),
            build_id: kernel_build_id(),
        }
    }
}

impl KernelSymbols {
    /// Names kernel addresses (innermost first, as the kernel walked them): module `[kernel]`,
    /// `offset` the address.
    pub fn name(&mut self, addresses: &[u64]) -> Vec<Named> {
        let kernel = blazesym::symbolize::source::Kernel {
            // Only kallsyms: a vmlinux image with debug information is rarely installed.
            vmlinux: blazesym::MaybeDefault::None,
            ..Default::default()
        };
        let found = self
            .symbolizer
            .symbolize(&Source::Kernel(kernel), Input::AbsAddr(addresses))
            .unwrap_or_default();
        addresses
            .iter()
            .enumerate()
            .map(|(i, &address)| {
                let mut named = Named {
                    module: Some("[kernel]".into()),
                    offset: address,
                    build_id: self.build_id.clone(),
                    ..Named::default()
                };
                if let Some(Symbolized::Sym(sym)) = found.get(i) {
                    named.symbol = Some(sym.name.to_string());
                    named.symbol_offset = Some(sym.offset as u64);
                }
                named
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [name.len() as u32, desc.len() as u32, kind] {
            out.extend(word.to_ne_bytes());
        }
        for part in [name, desc] {
            out.extend(part);
            out.resize(out.len().div_ceil(4) * 4, 0);
        }
        out
    }

    #[test]
    fn the_kernels_build_id_is_its_gnu_note_of_type_3() {
        let mut notes = note(b"Xen\0", 3, &[9; 8]);
        notes.extend(note(b"GNU\0", 1, &[1, 2, 3]));
        notes.extend(note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef, 0x01]));
        assert_eq!(
            gnu_build_id(&notes),
            Some(&[0xde, 0xad, 0xbe, 0xef, 0x01][..])
        );
        assert_eq!(hex(&[0xde, 0xad, 0x01]), "dead01");
        assert_eq!(gnu_build_id(&notes[..notes.len() - 4]), None, "cut short");
        assert_eq!(gnu_build_id(&[]), None);
        assert_eq!(build_id("/nonexistent"), None);
    }
}
