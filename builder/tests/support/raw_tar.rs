//! A hand-rolled tar writer for hostile archives (the `tar` crate refuses to write them).
#![allow(dead_code)]

#[derive(Default)]
pub struct RawTar(pub Vec<u8>);

impl RawTar {
    pub fn entry(&mut self, name: &str, typeflag: u8, data: &[u8], link: &str) -> &mut Self {
        self.entry_with(name, typeflag, data, link, 0o644, 0, 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn entry_with(
        &mut self,
        name: &str,
        typeflag: u8,
        data: &[u8],
        link: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        self.entry_bytes(name.as_bytes(), typeflag, data, link, mode, uid, gid)
    }

    /// An entry whose name is raw bytes (not UTF-8, control characters).
    #[allow(clippy::too_many_arguments)]
    pub fn entry_bytes(
        &mut self,
        name: &[u8],
        typeflag: u8,
        data: &[u8],
        link: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], u64::from(uid));
        octal(&mut h[116..124], u64::from(gid));
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_600_000_000);
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }

    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let mut len = k.len() + v.len() + 3;
            len += len.to_string().len();
            if (len).to_string().len() + k.len() + v.len() + 3 != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.entry("PaxHeader", b'x', &body, "")
    }

    /// The archive with its end-of-archive marker.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.0.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}
