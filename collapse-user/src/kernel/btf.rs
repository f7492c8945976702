//! Kernel BTF (`/sys/kernel/btf/vmlinux`): the layout of kernel structs the eBPF programs read
//! with `bpf_probe_read_kernel`, so no offset is compiled in (Documentation/bpf/btf.rst).

use std::path::{Path, PathBuf};

use btf_rs::{Backend, Btf, BtfType, Type};

/// Where the kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF, kernel/bpf/sysfs_btf.c).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "{} is missing: this kernel was built without CONFIG_DEBUG_INFO_BTF, so collapse cannot \
         find task_struct.mm and khugepaged events cannot be attributed to processes",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("reading BTF from {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: btf_rs::Error,
    },
    #[error("BTF in {} has no `struct {name}`", path.display())]
    NoStruct { path: PathBuf, name: String },
    #[error("BTF in {}: `struct {name}` has no member `{member}`", path.display())]
    NoMember {
        path: PathBuf,
        name: String,
        member: String,
    },
    #[error("BTF in {}: `{name}.{member}` is a bitfield, not a byte-addressable member", path.display())]
    Bitfield {
        path: PathBuf,
        name: String,
        member: String,
    },
    #[error("BTF in {}: `{name}.{member}` is not a bitfield", path.display())]
    NotBitfield {
        path: PathBuf,
        name: String,
        member: String,
    },
    #[error("BTF in {}: resolving a type of `struct {name}`: {source}", path.display())]
    Resolve {
        path: PathBuf,
        name: String,
        source: btf_rs::Error,
    },
}

/// Whether the running kernel exposes its BTF.
pub fn btf_available() -> bool {
    Path::new(VMLINUX_BTF).is_file()
}

/// Byte offset of `mm` in `struct task_struct` on the running kernel.
pub fn task_struct_mm_offset() -> Result<u32, BtfError> {
    KernelBtf::open()?.member_offset("task_struct", "mm")
}

/// The kernel's BTF, opened once for several look-ups.
pub struct KernelBtf {
    btf: Btf,
    path: PathBuf,
}

impl KernelBtf {
    /// Opens [`VMLINUX_BTF`].
    pub fn open() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing {
                path: path.to_path_buf(),
            });
        }
        // Mapping the file and parsing types on demand takes milliseconds; parsing all of
        // vmlinux's types up front (the cached backend) takes a few hundred.
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|source| BtfError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            btf,
            path: path.to_path_buf(),
        })
    }

    /// Byte offset of `member` in `struct struct_name`, looking through anonymous struct and
    /// union members (e.g. the `randomized_struct_fields_start` group of `task_struct`,
    /// include/linux/compiler_types.h) and adding their offsets.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let st = self.find_struct(struct_name)?;
        let found = self.find_member(&st, struct_name, member, 0)?;
        let Some((bits, bitfield)) = found else {
            return Err(BtfError::NoMember {
                path: self.path.clone(),
                name: struct_name.to_owned(),
                member: member.to_owned(),
            });
        };
        if bitfield || bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                path: self.path.clone(),
                name: struct_name.to_owned(),
                member: member.to_owned(),
            });
        }
        Ok(bits / 8)
    }

    /// Whether BTF has a function `name` (e.g. `bpf_iter_task`, the task iterator's target).
    pub fn has_func(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .unwrap_or_default()
            .iter()
            .any(|t| matches!(t, Type::Func(_)))
    }

    /// Bit offset of the one-bit bitfield `member` in `struct struct_name` (such as
    /// `task_struct::in_user_fault`, include/linux/sched.h).
    pub fn bit_member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let st = self.find_struct(struct_name)?;
        match self.find_member(&st, struct_name, member, 0)? {
            Some((bits, true)) => Ok(bits),
            Some((_, false)) => Err(BtfError::NotBitfield {
                path: self.path.clone(),
                name: struct_name.to_owned(),
                member: member.to_owned(),
            }),
            None => Err(BtfError::NoMember {
                path: self.path.clone(),
                name: struct_name.to_owned(),
                member: member.to_owned(),
            }),
        }
    }

    /// Size in bytes of `struct struct_name`.
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        Ok(self.find_struct(struct_name)?.size() as u32)
    }

    /// The complete definition of `struct name` (not a forward declaration).
    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// Bit offset (from the start of the outermost struct) of `member`, and whether it is a
    /// bitfield. Searches named members first, then anonymous ones, depth first.
    fn find_member(
        &self,
        st: &btf_rs::Struct,
        struct_name: &str,
        member: &str,
        base_bits: u32,
    ) -> Result<Option<(u32, bool)>, BtfError> {
        let resolve_err = |source| BtfError::Resolve {
            path: self.path.clone(),
            name: struct_name.to_owned(),
            source,
        };
        for m in &st.members {
            // A name offset of 0 is the empty string: an anonymous member.
            if m.get_name_offset() == Some(0) {
                continue;
            }
            if self.btf.resolve_name(m).map_err(resolve_err)? == member {
                return Ok(Some((
                    base_bits + m.bit_offset(),
                    m.bitfield_size().is_some_and(|s| s != 0),
                )));
            }
        }
        for m in st.members.iter().filter(|m| m.get_name_offset() == Some(0)) {
            let inner = match self
                .strip_modifiers(self.btf.resolve_chained_type(m).map_err(resolve_err)?)
            {
                Ok(t) => t,
                Err(source) => return Err(resolve_err(source)),
            };
            if let Type::Struct(inner) | Type::Union(inner) = inner
                && let Some(found) =
                    self.find_member(&inner, struct_name, member, base_bits + m.bit_offset())?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Follows typedef / const / volatile / restrict / type tags to the underlying type.
    fn strip_modifiers(&self, mut t: Type) -> Result<Type, btf_rs::Error> {
        loop {
            t = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x)?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(x)?
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(x)?,
                _ => return Ok(t),
            };
        }
    }
}

/// One parameter of a raw tracepoint's probe: its name where BTF keeps it, and its type as C
/// would write it (`unsigned long`, `struct pt_regs *`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeParam {
    pub name: String,
    pub c_type: String,
}

impl KernelBtf {
    /// The parameters of a raw tracepoint, without the leading `void *__data`. Names come from
    /// the event's `trace_event_raw_event_<name>` function (include/trace/trace_events.h), whose
    /// prototype BTF keeps with names; types from `btf_trace_<name>` (include/linux/tracepoint.h),
    /// the typedef raw tracepoint programs are checked against. `None`: no such tracepoint.
    pub fn raw_tracepoint_params(&self, name: &str) -> Result<Option<Vec<ProbeParam>>, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let resolve_err = |source| BtfError::Resolve {
            path: self.path.clone(),
            name: typedef.clone(),
            source,
        };
        let Some(Type::Typedef(t)) = self
            .btf
            .resolve_types_by_name(&typedef)
            .unwrap_or_default()
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))
        else {
            return Ok(None);
        };
        let Type::Ptr(ptr) = self.btf.resolve_chained_type(&t).map_err(resolve_err)? else {
            return Ok(None);
        };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr).map_err(resolve_err)?
        else {
            return Ok(None);
        };
        let names: Vec<String> = self
            .btf
            .resolve_types_by_name(&format!("trace_event_raw_event_{name}"))
            .unwrap_or_default()
            .into_iter()
            .find_map(|t| match t {
                Type::Func(f) => match self.btf.resolve_chained_type(&f) {
                    Ok(Type::FuncProto(p)) => Some(p),
                    _ => None,
                },
                _ => None,
            })
            .map(|p| {
                p.parameters
                    .iter()
                    .skip(1)
                    .map(|q| self.btf.resolve_name(q).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        let mut params = Vec::new();
        for (i, p) in proto.parameters.iter().skip(1).enumerate() {
            let ty = self.btf.resolve_chained_type(p).map_err(resolve_err)?;
            params.push(ProbeParam {
                name: names.get(i).cloned().unwrap_or_default(),
                c_type: self.c_type(ty, 0).map_err(resolve_err)?,
            });
        }
        Ok(Some(params))
    }

    /// A type as C writes it, typedefs kept by name (`gfp_t`), pointers with ` *`.
    fn c_type(&self, t: Type, depth: u32) -> Result<String, btf_rs::Error> {
        if depth > 8 {
            return Ok("?".into());
        }
        Ok(match &t {
            Type::Ptr(p) => match self.btf.resolve_chained_type(p) {
                Ok(inner) => format!("{} *", self.c_type(inner, depth + 1)?),
                Err(_) => "void *".into(),
            },
            Type::Struct(x) => format!("struct {}", self.btf.resolve_name(x)?),
            Type::Union(x) => format!("union {}", self.btf.resolve_name(x)?),
            Type::Const(x) | Type::Volatile(x) => {
                self.c_type(self.btf.resolve_chained_type(x)?, depth + 1)?
            }
            Type::Int(x) => self.btf.resolve_name(x)?,
            Type::Typedef(x) => self.btf.resolve_name(x)?,
            _ => "?".into(),
        })
    }
}
