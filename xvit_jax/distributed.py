"""Joining the processes of a multi-host run (jax.distributed), before anything touches a device; how many
share a host.

Every process runs the same command. On Cloud TPU VMs (pod slices, GKE) and in SLURM jobs JAX finds the
coordinator, the process count and this process's index by itself. Elsewhere (GKE with GPUs, plain VMs,
two processes on one machine) give them: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I, or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
One process drives all the devices of its host; under SLURM JAX would give each process only GPU
$SLURM_LOCALID, so set JAX_LOCAL_DEVICE_IDS=0,1,...,7 (launch/slurm.sbatch does).
"""

import glob
import importlib.util
import os
import socket
import zlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from xvit_jax.errors import UserError


PCI_DEVICES = "/sys/bus/pci/devices"
GOOGLE_PCI_VENDOR = "0x1ae0"
# TPU v3, v4, v5p, v5e, v6e, 7x, 8 and an unnamed one, as JAX knows them (jax/_src/hardware_utils.py)
TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076", "0x007c", "0x0083")


def _on_cloud_tpu_vm():
  """TPU chips on the PCI bus and libtpu installed: JAX's own test before it looks for the hosts of a pod
  slice, made here from the machine (JAX keeps its answer in a private module)."""
  if "JAX_FORCE_TPU_INIT" in os.environ:
    return True
  if importlib.util.find_spec("libtpu") is None and not os.path.exists(os.environ.get("TPU_LIBRARY_PATH", "")):
    return False
  for device in glob.glob(os.path.join(PCI_DEVICES, "*.0")):
    try:
      with open(os.path.join(device, "vendor")) as vendor, open(os.path.join(device, "device")) as kind:
        if vendor.read().strip() == GOOGLE_PCI_VENDOR and kind.read().strip() in TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def _detected_cluster():
  """A multi-host environment JAX knows how to read, by the variables its schedulers set."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return "SLURM"
  if _on_cloud_tpu_vm():  # pod slice hosts are found through the metadata server (or GKE's variables)
    return "Cloud TPU"
  if "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
    return "TPU multislice"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  return None


def initialize(coordinator_address=None, num_processes=None, process_id=None):
  """Joins the run's processes if there are several; returns a line describing what was done (or None)."""
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UserError(f"--coordinator_address={coordinator_address} also needs --num_processes and --process_id "
                      "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    if not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} is not allowed: an index in 0..{num_processes - 1} "
                      f"for --num_processes={num_processes}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return f"process {process_id} of {num_processes}, coordinator {coordinator_address}"
  cluster = _detected_cluster()
  if cluster:
    jax.distributed.initialize()
    return f"{cluster}: process {jax.process_index()} of {jax.process_count()}"
  return None


def processes_on_this_host():
  """How many of the run's JAX processes share this machine (by host name): a collective, every process
  calls it."""
  if jax.process_count() == 1:
    return 1
  hosts = multihost_utils.process_allgather(np.uint32(zlib.crc32(socket.gethostname().encode())))
  return int(np.sum(hosts == hosts[jax.process_index()]))
