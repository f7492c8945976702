//! Interfaces to the running kernel: tracefs formats, THP sysfs (with restore), pagemap and
//! kpageflags, BTF, /proc.
