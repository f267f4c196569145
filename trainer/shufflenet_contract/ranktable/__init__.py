"""The HCCL rank table (hccl.json), v1.0 and the A3 super-pod v1.2, for its three readers:

- `format`: the format itself: constants, `RankTableError`, `parse`/`dump` and
  `validate_rank_table`, the rules a completed table must meet.
- `build`: what the operator builds a table with, from its pods' device-plugin annotations
  (`pods_from_annotations`, `build_rank_table`, `configmap_data`).
- `mount`: a rank's side: wait for its attempt's table in the mounted ConfigMap
  (`wait_for_table`), check that it lists this process (`own_entry`) and hand HCCL a
  regular-file copy (`copy_for_hccl`).

`format` imports nothing else of the package; `build` and `mount` import only `format`. Every
public name is here too, so `ranktable.X` needs no module name.
"""

from .build import (
    ACCELERATOR_TYPE_LABEL,
    ANNOTATION,
    DEVICE_ANNOTATIONS,
    NPU_ANNOTATION,
    RANK_INDEX_ANNOTATION,
    RESOURCE_910,
    RESOURCE_NPU,
    SCHEDULE_POLICY_ANNOTATION,
    SUPER_POD_ACCELERATOR_TYPES,
    SUPER_POD_POLICIES,
    AnnotatedPod,
    Device,
    PodDevices,
    build_rank_table,
    configmap_data,
    device_annotation,
    initializing_table,
    pods_from_annotations,
    rank_index,
    wants_super_pod,
)
from .format import (
    ATTEMPT_KEY,
    FILE_KEY,
    HOST_NIC_IP,
    MAX_CONFIGMAP_BYTES,
    MAX_SERVER_ID,
    MOUNT_DIR,
    STATUS_COMPLETED,
    STATUS_INITIALIZING,
    VERSION,
    VERSION_KEY,
    VERSION_SUPER_POD,
    VERSIONS,
    RankTableError,
    dump,
    parse,
    validate_rank_table,
)
from .mount import (
    DATA_LINK,
    Member,
    RankTableTimeout,
    Snapshot,
    copy_for_hccl,
    copy_name,
    current_table,
    own_entry,
    publish,
    read_mounted,
    wait_for_table,
)

__all__ = [
    "ACCELERATOR_TYPE_LABEL",
    "ANNOTATION",
    "ATTEMPT_KEY",
    "DATA_LINK",
    "DEVICE_ANNOTATIONS",
    "FILE_KEY",
    "HOST_NIC_IP",
    "MAX_CONFIGMAP_BYTES",
    "MAX_SERVER_ID",
    "MOUNT_DIR",
    "NPU_ANNOTATION",
    "RANK_INDEX_ANNOTATION",
    "RESOURCE_910",
    "RESOURCE_NPU",
    "SCHEDULE_POLICY_ANNOTATION",
    "STATUS_COMPLETED",
    "STATUS_INITIALIZING",
    "SUPER_POD_ACCELERATOR_TYPES",
    "SUPER_POD_POLICIES",
    "VERSION",
    "VERSIONS",
    "VERSION_KEY",
    "VERSION_SUPER_POD",
    "AnnotatedPod",
    "Device",
    "Member",
    "PodDevices",
    "RankTableError",
    "RankTableTimeout",
    "Snapshot",
    "build_rank_table",
    "configmap_data",
    "copy_for_hccl",
    "copy_name",
    "current_table",
    "device_annotation",
    "dump",
    "initializing_table",
    "own_entry",
    "parse",
    "pods_from_annotations",
    "publish",
    "rank_index",
    "read_mounted",
    "validate_rank_table",
    "wait_for_table",
    "wants_super_pod",
]
