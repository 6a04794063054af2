//! The qcow2 output (the VM-template format) boots to `airlock: ready` like the raw image.
#![allow(clippy::unwrap_used, reason = "a test stops at the first unexpected error")]

mod common;

use common::*;
use qemu_tests::{BOOT_TIMEOUT, Vm, VmConfig};

#[test]
fn qcow2_output_boots_to_ready() {
    qemu_tests::init_logging();
    let built = build_test_image("demo").expect("building the demo test image");
    let qcow2 = built.image.with_extension("qcow2");
    assert!(qcow2.is_file(), "the demo spec asks for a qcow2 output: {}", qcow2.display());
    let mut vm = Vm::boot(VmConfig::new("demo-qcow2", &qcow2)).unwrap();
    // First boot: includes pulling the demo stack's images from the appliance's registry.
    vm.wait_for_console("airlock: ready", BOOT_TIMEOUT * 3).unwrap();
    assert_eq!(vm.succeed("systemctl --failed --no-legend --plain").unwrap().trim(), "");
    let root_partuuid = built.plan.seed.uuid("partition:root-x86-64").to_string();
    assert_eq!(vm.succeed("findmnt -no PARTUUID /").unwrap().trim(), root_partuuid);
    vm.crash().unwrap();
}
