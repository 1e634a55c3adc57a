"""A real-size run's memory and output (GitHub issue 14, part 3): a memory-mapped stack of 200,000
all-atom adenylate kinase particles at 128², a short training, then the full posterior pass and the
products, with default output settings; prints the peak resident memory and the output's size.

The stack is built to measure memory and disk, not accuracy: `--distinct` noise-free images
(atomicspi's own renderer, random poses, shifts and defoci) are repeated with fresh white noise at SNR
0.1, written straight into a memory-mapped `.mrcs` (13 GB for 200,000 × 128² float32), with a
RELION 3.1 star file naming each particle's pose and CTF.

    python bench/large_stack.py --folder /tmp/large            # simulate (once) and run
    python bench/large_stack.py --folder /tmp/large --n-particles 20000   # a smaller version
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

_RUN = """
import resource, sys, time
from atomicspi.infer import main
def _peak_kib():
    # VmHWM: this process's own high-water mark (ru_maxrss would also count the parent's resident
    # memory at the fork, which Linux carries across fork and exec)
    try:
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
code = main([sys.argv[1], "--quiet"])
print("PEAK_KIB", _peak_kib(), "WALL_S", time.perf_counter() - started)
sys.exit(code)
"""


def simulate(folder: pathlib.Path, n_particles: int, box_size: int, pixel_size: float, distinct: int, model: str,
             num_steps: int, seed: int) -> pathlib.Path:
    import mrcfile
    import yaml

    import atomicspi
    from atomicspi._simulation import simulate_particles
    from atomicspi.io import particle_dataset_from_arrays, write_relion_star
    from atomicspi.structure import load_structure

    folder.mkdir(parents=True, exist_ok=True)
    structure = load_structure(pathlib.Path(atomicspi.__file__).parent / "data" / "adk_closed.pdb.gz")
    structure = structure.with_positions(structure.positions_in_angstroms - structure.positions_in_angstroms.mean(axis=0))
    structure.to_mdtraj().save_pdb(str(folder / "reference.pdb"))
    positions = np.broadcast_to(structure.positions_in_angstroms, (distinct, structure.n_atoms, 3))
    clean = simulate_particles(structure, positions, box_size, pixel_size, 1e12, seed=seed)
    signal_std = float(np.sqrt(np.mean(np.var(clean.images, axis=(1, 2)))))
    noise_std = signal_std / np.sqrt(0.1)
    stack_path = folder / "particles.mrcs"
    rng = np.random.default_rng(seed)
    chunk = 4096
    with mrcfile.new_mmap(str(stack_path), shape=(n_particles, box_size, box_size), mrc_mode=2, overwrite=True) as mrc:
        mrc.voxel_size = pixel_size
        for start in range(0, n_particles, chunk):
            stop = min(start + chunk, n_particles)
            source = np.arange(start, stop) % distinct
            noise = rng.standard_normal((stop - start, box_size, box_size), dtype=np.float32) * np.float32(noise_std)
            mrc.data[start:stop] = clean.images[source].astype(np.float32) + noise
    source = np.arange(n_particles) % distinct
    ctf = {name: np.asarray(values)[source] if np.ndim(values) else values for name, values in clean.ctf.items()}
    dataset = particle_dataset_from_arrays(stack_path, pixel_size, ctf, clean.rotations[source], clean.shifts_in_angstroms[source])
    write_relion_star(folder / "particles.star", dataset)
    config = {"particles": "particles.star", "reference": "reference.pdb", "model": model, "poses": "given",
              "output": "output", "num_steps": num_steps}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "dataset.yaml"


def folder_size(folder: pathlib.Path) -> dict:
    return {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--n-particles", type=int, default=200_000)
    parser.add_argument("--box-size", type=int, default=128)
    parser.add_argument("--pixel-size", type=float, default=1.5)
    parser.add_argument("--distinct", type=int, default=512, help="noise-free images repeated with fresh noise")
    parser.add_argument("--model", default="nma")
    parser.add_argument("--num-steps", type=int, default=20, help="a short training: the pass after it is measured")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    folder = pathlib.Path(arguments.folder)
    yaml_path = folder / "dataset.yaml"
    started = time.perf_counter()
    if not yaml_path.is_file():
        simulate(folder, arguments.n_particles, arguments.box_size, arguments.pixel_size, arguments.distinct,
                 arguments.model, arguments.num_steps, arguments.seed)
        print(f"simulated {arguments.n_particles} particles in {time.perf_counter() - started:.0f} s "
              f"(stack {(folder / 'particles.mrcs').stat().st_size / 1e9:.1f} GB)", flush=True)
    shutil.rmtree(folder / "output", ignore_errors=True)
    result = subprocess.run([sys.executable, "-c", _RUN, str(yaml_path)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    words = next(line for line in result.stdout.splitlines() if line.startswith("PEAK_KIB")).split()
    peak, wall = 1024 * int(words[1]), float(words[3])
    sizes = folder_size(folder / "output")
    record = json.loads((folder / "output" / "run.json").read_text())
    print(f"{record['n_particles']} particles, {record['box_size']}², model {record['config']['model']}, "
          f"{record['config']['num_steps']} steps: wall {wall / 60:.1f} min "
          f"(training {record['timings']['training_seconds']:.0f} s, posterior pass {record['timings']['posterior_seconds']:.0f} s, "
          f"products {record['timings'].get('products_seconds', 0):.0f} s)")
    print(f"peak RSS {peak / 2**30:.2f} GiB; output {sum(sizes.values()) / 1e9:.2f} GB")
    for name, size in sizes.items():
        print(f"  {name:28s} {size / 1e6:10.1f} MB")
    print(f"outputs: {json.dumps({k: v for k, v in record['outputs'].items() if k != 'posterior_ensemble'})}")


if __name__ == "__main__":
    main()
