//! Platform connectors (KVM through libvirt, VMware, Hyper-V) and their transports (NBD, hot-add,
//! SAN) behind one `Connector` trait. Nothing is implemented yet: the KVM connector is issue 3.
