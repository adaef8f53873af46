//! Pure statistics over what the kernel counted: no I/O here, so every rule is unit-tested on
//! literal inputs.

pub mod cumulative;
pub mod faults;
pub mod pressure;
pub mod syscalls;
pub mod top;
