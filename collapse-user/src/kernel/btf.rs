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
