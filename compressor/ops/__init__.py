"""The op registry (registry.py), its record types (record.py), one MAC counter (macs.py) and the fixtures."""
from compressor.ops.record import OpRecord, TargetOp
from compressor.ops.registry import RECORDS, TARGET_OPS, op_name, record_for, target_op

__all__ = ["OpRecord", "RECORDS", "TARGET_OPS", "TargetOp", "op_name", "record_for", "target_op"]
