//! Finding tracefs (mounting it when this kernel has it but nobody mounted it) and reading a
//! tracepoint's field layout from its `format` file, so that offsets are never hard-coded.

use std::{ffi::CString, fs, io, path::PathBuf};

use crate::error::Failure;

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns the tracefs mount point, mounting tracefs at `/sys/kernel/tracing` if needed.
pub fn ensure_mounted() -> Result<PathBuf, Failure> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let target = MOUNT_POINTS[0];
    let cstr = |s: &str| CString::new(s).expect("literal without NUL");
    let (source, target_c, fstype) = (cstr("nodev"), cstr(target), cstr("tracefs"));
    // SAFETY: valid NUL-terminated strings and no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    match (rc, find()) {
        (0, Some(found)) => {
            log::info!("mounted tracefs at {target}");
            Ok(found)
        }
        _ => Err(Failure::KernelUnsupported {
            what: "a mounted tracefs".into(),
            hint: format!(
                "mounting it failed ({}); mount it with `sudo mount -t tracefs nodev {target}`",
                io::Error::last_os_error()
            ),
        }),
    }
}

fn find() -> Option<PathBuf> {
    MOUNT_POINTS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("events").is_dir())
}

/// One of a tracepoint's files in tracefs (`format`, `id`); missing means the kernel lacks it.
fn read_event_file(category: &str, name: &str, file: &str) -> Result<String, Failure> {
    let path = ensure_mounted()?
        .join("events")
        .join(category)
        .join(name)
        .join(file);
    fs::read_to_string(&path).map_err(|err| Failure::KernelUnsupported {
        what: format!("the tracepoint {category}:{name}"),
        hint: format!("reading {}: {err}", path.display()),
    })
}

/// The id of a tracepoint: the `config` of a perf event on it.
pub fn event_id(category: &str, name: &str) -> Result<u64, Failure> {
    let text = read_event_file(category, name, "id")?;
    text.trim().parse().map_err(|_| Failure::KernelUnsupported {
        what: format!("the tracepoint {category}:{name}"),
        hint: format!("its tracefs id is not a number: {text:?}"),
    })
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracefs `format` file.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(';').map(str::trim);
            let decl = parts.next()?.strip_prefix("field:")?;
            // The name is the declaration's last word, less any array suffix: `char comm[16]`.
            let name = decl.split_whitespace().last()?;
            let name = name.split('[').next()?.to_owned();
            let mut number =
                |key: &str| -> Option<u32> { parts.next()?.strip_prefix(key)?.parse().ok() };
            let offset = number("offset:")?;
            let size = number("size:")?;
            Some(Field { name, offset, size })
        })
        .collect()
}

/// The layout of one tracepoint, read from tracefs.
pub struct Format {
    event: String,
    fields: Vec<Field>,
}

impl Format {
    pub fn read(category: &str, name: &str) -> Result<Format, Failure> {
        let text = read_event_file(category, name, "format")?;
        Ok(Format {
            event: format!("{category}:{name}"),
            fields: parse_format(&text),
        })
    }

    /// Every field of the record, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The offset of a field, checking that its size is what the program reads.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, Failure> {
        match self.fields.iter().find(|f| f.name == field) {
            Some(f) if f.size == size => Ok(f.offset),
            Some(f) => Err(self.unsupported(format!(
                "field `{field}` of size {} (expected {size})",
                f.size
            ))),
            None => Err(self.unsupported(format!("no field `{field}`"))),
        }
    }

    fn unsupported(&self, detail: String) -> Failure {
        Failure::KernelUnsupported {
            what: format!("the expected layout of {}", self.event),
            hint: detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `task:task_newtask` on 6.18.
    const NEWTASK: &str = "name: task_newtask
ID: 140
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;
\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;

print fmt: \"pid=%d comm=%s clone_flags=%llx\", REC->pid, REC->comm, REC->clone_flags
";

    #[test]
    fn fields_are_parsed_with_offsets_and_sizes() {
        let fields = parse_format(NEWTASK);
        assert_eq!(fields.len(), 5);
        assert_eq!(
            fields[3],
            Field {
                name: "comm".into(),
                offset: 12,
                size: 16
            }
        );
        let format = Format {
            event: "task:task_newtask".into(),
            fields,
        };
        assert_eq!(format.offset("clone_flags", 8).unwrap(), 32);
        assert_eq!(format.offset("pid", 4).unwrap(), 8);
        assert!(format.offset("pid", 8).is_err());
        assert!(format.offset("nope", 4).is_err());
    }
}
