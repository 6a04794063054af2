//! `<name>.ova`: what VMware (and VirtualBox) import as a ready virtual machine.
//!
//! An OVA is a ustar tar whose members are, in this order, the OVF descriptor, the manifest
//! (`SHA256(<member>)= <hex>` for every other member) and the disk. Tar headers are fixed:
//! mode 0644, uid/gid 0, no user or group names, mtime `SOURCE_DATE_EPOCH`.
//!
//! The OVF describes UEFI firmware with Secure Boot off (systemd-boot and Debian's kernel are
//! booted unsigned), the CPUs and memory from `[outputs.vm]`, an LSI Logic SCSI controller with
//! the disk (capacity: the raw image's size), and one VMXNET3 NIC on the "VM Network" network.

use crate::output_file::PartialFile;
use crate::outputs::VmHardware;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

/// What the OVF says.
#[derive(Debug, Clone)]
pub struct Ovf<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub vm: VmHardware,
    /// The virtual disk's size in bytes (the raw image's).
    pub capacity: u64,
    /// The streamOptimized VMDK to carry.
    pub vmdk: &'a Path,
}

/// XML-escapes text for an element or attribute.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// The OVF descriptor's text.
pub fn ovf_text(ovf: &Ovf<'_>, vmdk_name: &str, vmdk_size: u64) -> String {
    let name = esc(ovf.name);
    let version = esc(ovf.version);
    let description = esc(if ovf.description.is_empty() { ovf.name } else { ovf.description });
    let vmdk_name = esc(vmdk_name);
    let (cpus, mem, capacity) = (ovf.vm.cpus, ovf.vm.memory_mib, ovf.capacity);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{vmdk_name}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The logical networks used</Info>
    <Network ovf:name="VM Network">
      <Description>The appliance's network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>{description}</Info>
    <Name>{name}</Name>
    <ProductSection>
      <Info>The appliance</Info>
      <Product>{name}</Product>
      <Version>{version}</Version>
      <FullVersion>{version}</FullVersion>
    </ProductSection>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian12_64Guest">
      <Info>The guest operating system</Info>
      <Description>Debian GNU/Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{mem}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VMXNET3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="false"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn header(path: &str, size: u64, mtime: i64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).with_context(|| format!("OVA member name {path:?}"))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    // Before 1970 cannot be expressed in ustar; SOURCE_DATE_EPOCH is never that in practice.
    h.set_mtime(u64::try_from(mtime).unwrap_or(0));
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Writes the OVA at `dest`: `<name>.ovf`, `<name>.mf`, then the VMDK.
pub fn write(ovf: &Ovf<'_>, dest: &Path, epoch: i64) -> Result<()> {
    let vmdk_name = format!("{}.vmdk", ovf.name);
    let vmdk_size = std::fs::metadata(ovf.vmdk).with_context(|| format!("reading {}", ovf.vmdk.display()))?.len();
    let ovf_name = format!("{}.ovf", ovf.name);
    let ovf_bytes = ovf_text(ovf, &vmdk_name, vmdk_size).into_bytes();
    let mf = format!(
        "SHA256({ovf_name})= {}\nSHA256({vmdk_name})= {}\n",
        hex::encode(Sha256::digest(&ovf_bytes)),
        sha256_file(ovf.vmdk)?
    );

    let partial = PartialFile::create(dest)?;
    let shown = partial.partial_path().display().to_string();
    let mut tar = tar::Builder::new(BufWriter::new(partial.file()));
    let mf_name = format!("{}.mf", ovf.name);
    for (name, bytes) in [(&ovf_name, ovf_bytes.as_slice()), (&mf_name, mf.as_bytes())] {
        tar.append(&header(name, bytes.len() as u64, epoch)?, bytes)
            .with_context(|| format!("adding {name} to {shown}"))?;
    }
    let vmdk = File::open(ovf.vmdk).with_context(|| format!("opening {}", ovf.vmdk.display()))?;
    tar.append(&header(&vmdk_name, vmdk_size, epoch)?, vmdk)
        .with_context(|| format!("adding {vmdk_name} to {shown}"))?;
    let mut w = tar.into_inner().with_context(|| format!("finishing {shown}"))?;
    w.flush().with_context(|| format!("writing {shown}"))?;
    drop(w);
    partial.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovf_names_capacity_hardware_and_escapes() {
        let ovf = Ovf {
            name: "demo",
            version: "1.0",
            description: "a <b> & c",
            vm: VmHardware { cpus: 4, memory_mib: 3072 },
            capacity: 3 << 30,
            vmdk: Path::new("x.vmdk"),
        };
        let t = ovf_text(&ovf, "demo.vmdk", 1234);
        assert!(t.contains(r#"ovf:capacity="3221225472""#), "{t}");
        assert!(t.contains(r#"ovf:href="demo.vmdk" ovf:id="file1" ovf:size="1234""#));
        assert!(t.contains("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>"));
        assert!(t.contains("<rasd:VirtualQuantity>3072</rasd:VirtualQuantity>"));
        assert!(t.contains(r#"vmw:key="firmware" vmw:value="efi""#));
        assert!(t.contains("<Info>a &lt;b&gt; &amp; c</Info>"));
    }
}
