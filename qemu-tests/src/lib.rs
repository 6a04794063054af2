//! QEMU test harness for airlock appliance images (arrives with the boot issue).
