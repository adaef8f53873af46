//! Which allocator a process uses (`leaks --malloc`), and where its functions are in the file
//! that holds them: the uprobes go on that file, at those offsets.
//!
//! A process calls the `malloc` its dynamic linker binds first: its own (statically linked, or
//! a custom allocator), a preloaded or linked allocator library (jemalloc, tcmalloc, mimalloc),
//! or the C library's. The file is opened through `/proc/PID/map_files`, so it is the very
//! file the process mapped, also inside a container or after an upgrade replaced it on disk.

use std::{
    fs,
    path::{Path, PathBuf},
};

use memtrace_common::allocs::Shape;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use crate::{error::Failure, stacks::maps::Mapping};

/// What an allocator function does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Allocates(Shape),
    Frees,
}

/// The functions traced, by the name every malloc-compatible allocator exports.
pub const FUNCTIONS: [(&str, Role); 10] = [
    ("malloc", Role::Allocates(Shape::Malloc)),
    ("calloc", Role::Allocates(Shape::Calloc)),
    ("realloc", Role::Allocates(Shape::Realloc)),
    ("reallocarray", Role::Allocates(Shape::ReallocArray)),
    ("posix_memalign", Role::Allocates(Shape::PosixMemalign)),
    ("aligned_alloc", Role::Allocates(Shape::Memalign)),
    ("memalign", Role::Allocates(Shape::Memalign)),
    ("valloc", Role::Allocates(Shape::Malloc)),
    ("pvalloc", Role::Allocates(Shape::Pvalloc)),
    ("free", Role::Frees),
];

/// Allocator libraries that replace the C library's malloc when loaded.
const ALLOCATOR_LIBRARIES: [&str; 3] = ["libjemalloc", "libtcmalloc", "libmimalloc"];

/// One traced function: its file offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: &'static str,
    pub role: Role,
    pub offset: u64,
}

/// The allocator of a process.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// The file the uprobes go on (a `/proc/PID/map_files` entry, or `--allocator`'s path).
    pub file: PathBuf,
    /// Its path as the process sees it.
    pub shown: String,
    /// Its inode, to recognise it in a process's mappings.
    pub inode: u64,
    /// One per distinct address (aliases such as glibc's `aligned_alloc` and `memalign` share
    /// one, and are traced once).
    pub functions: Vec<Function>,
}

/// The allocator `pid` uses: `forced` (`--allocator`), or the first of its mapped objects that
/// defines `malloc` and `free`, in the order the dynamic linker would bind them.
pub fn of_process(pid: u32, forced: Option<&Path>) -> Result<Allocator, Failure> {
    let maps = crate::stacks::maps::read(pid).map_err(|_| Failure::NoSuchProcess(pid))?;
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let files = mapped_files(&maps);
    let candidates: Vec<&Mapping> = match forced {
        Some(path) => {
            let wanted = path.to_string_lossy();
            let mapped = files.iter().copied().find(|m| m.path == wanted);
            match mapped {
                Some(mapping) => vec![mapping],
                None => return from_file(path, &wanted, None),
            }
        }
        None => binding_order(&files, &exe.to_string_lossy()),
    };
    for mapping in &candidates {
        let file = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            mapping.start, mapping.end
        ));
        match from_file(&file, &mapping.path, Some(mapping.inode)) {
            Ok(allocator) => return Ok(allocator),
            Err(err) if forced.is_some() => return Err(err),
            Err(_) => {}
        }
    }
    Err(Failure::NoAllocator {
        pid,
        reason: "no object it maps defines malloc and free (a statically linked, stripped \
                 program?): name the object with --allocator PATH"
            .into(),
    })
}

/// The allocator a program about to be started will use: its own, if it defines `malloc`
/// (statically linked, or a custom allocator); an allocator library `LD_PRELOAD` names; or else
/// the C library memtrace itself uses. A program linked with an allocator library is refused:
/// where that library is, only its dynamic linker knows. With `forced`, `program` is the
/// allocator (`--allocator`).
pub fn of_program(program: &Path, forced: bool) -> Result<Allocator, Failure> {
    let shown = program.to_string_lossy();
    if forced {
        return from_file(program, &shown, None);
    }
    let data = fs::read(program).map_err(|err| Failure::CommandFailed {
        command: shown.to_string(),
        reason: err.to_string(),
        code: crate::error::exit_code::COMMAND_NOT_EXECUTABLE,
    })?;
    let elf = object::File::parse(&*data).ok();
    if let Some(elf) = &elf
        && let Ok(own) = from_elf(elf, program, &shown, None)
    {
        return Ok(own);
    }
    let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
    if let Some(library) = preloaded_allocator(&preload) {
        return from_file(Path::new(library), library, None);
    }
    if let Some(elf) = &elf {
        if !has_interpreter(elf) {
            return Err(Failure::NoAllocator {
                pid: 0,
                reason: format!(
                    "{shown} is statically linked and defines no malloc symbol (stripped?): \
                     name the allocator with --allocator PATH"
                ),
            });
        }
        if let Some(library) = linked_allocator(elf) {
            return Err(Failure::NoAllocator {
                pid: 0,
                reason: format!(
                    "{shown} is linked with {library}: name it with --allocator PATH, or \
                     start the program and trace it with --pid"
                ),
            });
        }
    }
    let maps =
        crate::stacks::maps::read(std::process::id()).map_err(|err| Failure::NoAllocator {
            pid: 0,
            reason: format!("cannot read memtrace's own mappings: {err}"),
        })?;
    let files = mapped_files(&maps);
    let libc = files
        .iter()
        .find(|m| is_c_library(&m.path))
        .ok_or_else(|| Failure::NoAllocator {
            pid: 0,
            reason: "memtrace maps no C library to take the program's from".into(),
        })?;
    from_file(Path::new(&libc.path), &libc.path, Some(libc.inode))
}

/// Each mapped file once (its first executable mapping), in address order.
fn mapped_files(maps: &[Mapping]) -> Vec<&Mapping> {
    let mut seen = std::collections::HashSet::new();
    maps.iter()
        .filter(|m| m.executable && m.is_file() && seen.insert(m.inode))
        .collect()
}

/// The objects that could provide `malloc`, first bound first: the program itself, an
/// allocator library, the C library.
fn binding_order<'a>(files: &[&'a Mapping], exe: &str) -> Vec<&'a Mapping> {
    let mut order: Vec<&Mapping> = files.iter().copied().filter(|m| m.path == exe).collect();
    order.extend(
        files
            .iter()
            .copied()
            .filter(|m| is_allocator_library(&m.path)),
    );
    order.extend(files.iter().copied().filter(|m| is_c_library(&m.path)));
    order
}

fn is_c_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    name.starts_with("libc.so") || name.starts_with("libc-2.")
}

fn has_interpreter(elf: &object::File) -> bool {
    elf.section_by_name(".interp").is_some()
}

fn is_allocator_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    ALLOCATOR_LIBRARIES.iter().any(|lib| name.starts_with(lib))
}

/// The first allocator library in an `LD_PRELOAD` value (paths separated by colons or spaces).
fn preloaded_allocator(preload: &str) -> Option<&str> {
    preload
        .split([':', ' '])
        .find(|path| path.starts_with('/') && is_allocator_library(path))
}

/// An allocator library the program needs (`DT_NEEDED`, whose names are in `.dynstr`).
fn linked_allocator(elf: &object::File) -> Option<String> {
    let strings = elf.section_by_name(".dynstr")?.data().ok()?;
    strings
        .split(|&byte| byte == 0)
        .filter_map(|name| std::str::from_utf8(name).ok())
        .find(|name| is_allocator_library(name))
        .map(str::to_owned)
}

/// The allocator functions `file` defines, if it defines at least `malloc` and `free`.
fn from_file(file: &Path, shown: &str, inode: Option<u64>) -> Result<Allocator, Failure> {
    let unusable = |reason: String| Failure::NoAllocator { pid: 0, reason };
    let data = fs::read(file).map_err(|err| unusable(format!("cannot read {shown}: {err}")))?;
    let elf = object::File::parse(&*data)
        .map_err(|err| unusable(format!("{shown} is not an ELF object: {err}")))?;
    from_elf(&elf, file, shown, inode)
}

/// [`from_file`], on the file already parsed.
fn from_elf(
    elf: &object::File,
    file: &Path,
    shown: &str,
    inode: Option<u64>,
) -> Result<Allocator, Failure> {
    let unusable = |reason: String| Failure::NoAllocator { pid: 0, reason };
    let mut functions: Vec<Function> = Vec::new();
    for &(name, role) in &FUNCTIONS {
        let Some(offset) = file_offset_of(elf, name) else {
            continue;
        };
        if functions.iter().any(|f| f.offset == offset) {
            continue;
        }
        functions.push(Function { name, role, offset });
    }
    let defines = |name: &str| functions.iter().any(|f| f.name == name);
    if !defines("malloc") || !defines("free") {
        return Err(unusable(format!("{shown} defines no malloc and free")));
    }
    let inode = match inode {
        Some(inode) => inode,
        None => std::os::unix::fs::MetadataExt::ino(
            &fs::metadata(file).map_err(|err| unusable(format!("{shown}: {err}")))?,
        ),
    };
    Ok(Allocator {
        file: file.to_owned(),
        shown: shown.to_owned(),
        inode,
        functions,
    })
}

/// Where in the file the function `name` starts, from the dynamic symbols or the full table.
fn file_offset_of(elf: &object::File, name: &str) -> Option<u64> {
    let symbol = elf.dynamic_symbols().chain(elf.symbols()).find(|s| {
        s.is_definition() && s.kind() == object::SymbolKind::Text && s.name() == Ok(name)
    })?;
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    let (file_start, _) = section.file_range()?;
    Some(symbol.address() - section.address() + file_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(path: &str, inode: u64) -> Mapping {
        Mapping {
            start: inode << 20,
            end: (inode << 20) + 0x1000,
            offset: 0,
            executable: true,
            inode,
            path: path.into(),
        }
    }

    #[test]
    fn the_program_binds_first_then_an_allocator_library_then_libc() {
        let maps = [
            mapping("/usr/lib/x86_64-linux-gnu/libc.so.6", 3),
            mapping("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", 2),
            mapping("/usr/bin/app", 1),
            mapping("/usr/lib/x86_64-linux-gnu/libm.so.6", 4),
        ];
        let files: Vec<&Mapping> = maps.iter().collect();
        let order: Vec<u64> = binding_order(&files, "/usr/bin/app")
            .iter()
            .map(|m| m.inode)
            .collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn an_allocator_is_found_in_ld_preload() {
        assert_eq!(
            preloaded_allocator("/opt/lib/libfoo.so:/usr/lib/libjemalloc.so.2"),
            Some("/usr/lib/libjemalloc.so.2")
        );
        assert_eq!(preloaded_allocator("/usr/lib/libfoo.so libbar.so"), None);
        assert_eq!(preloaded_allocator(""), None);
    }

    #[test]
    fn finds_glibc_functions_once_per_address() {
        let libc = crate::stacks::maps::read(std::process::id())
            .unwrap()
            .into_iter()
            .find(|m| is_c_library(&m.path))
            .expect("the test binary maps a C library");
        let allocator = from_file(Path::new(&libc.path), &libc.path, Some(libc.inode)).unwrap();
        let names: Vec<&str> = allocator.functions.iter().map(|f| f.name).collect();
        assert!(names.contains(&"malloc") && names.contains(&"free") && names.contains(&"calloc"));
        let mut offsets: Vec<u64> = allocator.functions.iter().map(|f| f.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), allocator.functions.len());
    }
}
