//! Interfaces to the running kernel: tracefs formats, THP sysfs (with restore), pagemap and
//! kpageflags, BTF, /proc.
pub mod btf;
pub mod pagemap;
pub mod procs;
pub mod thp;
pub mod tracefs;
