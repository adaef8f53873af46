//! What more than one command runs: the kernel's counts and stacks put together with what
//! memtrace learnt of them, up to the report's rows.

pub mod attributed;
pub mod call_stacks;
pub mod machine;
