//! x86_64 specifics: the thin layer that touches the hardware.

pub mod cpu;
pub mod entry;
pub mod idt;
pub mod lapic;
pub mod mem;
pub mod page_tables;
pub mod percpu;
