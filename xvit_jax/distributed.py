"""Joining the processes of a multi-host run (jax.distributed), before anything touches a device.

Every process runs the same command. On Cloud TPU VMs (pod slices, GKE) and in SLURM jobs JAX finds the
coordinator, the process count and this process's index by itself. Elsewhere (GKE with GPUs, plain VMs,
two processes on one machine) give them: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I, or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
One process drives all the devices of its host; under SLURM JAX would give each process only GPU
$SLURM_LOCALID, so set JAX_LOCAL_DEVICE_IDS=0,1,...,7 (launch/slurm.sbatch does).
"""

import os

import jax

from xvit_jax.errors import UserError


def _on_cloud_tpu_vm():
  try:
    from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return bool(running_in_cloud_tpu_vm)


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
