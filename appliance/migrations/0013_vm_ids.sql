-- A VM is known by its platform's stable id (libvirt UUID; later vSphere instanceUuid, Hyper-V
-- VM id) beside its name, so a renamed VM keeps its rule. Rows from before are filled in by the
-- VM's next successful backup (found by name then).
ALTER TABLE rule_vms ADD COLUMN vm_id TEXT;
ALTER TABLE jobs ADD COLUMN vm_id TEXT;
CREATE UNIQUE INDEX rule_vms_platform_vm_id ON rule_vms (platform_id, vm_id);
