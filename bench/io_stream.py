"""Stream a large particle stack from disk in shuffled minibatches and report resident memory.

Writes an `.mrcs` of N images of D² float32 pixels (default 200,000 × 128² ≈ 13 GB) chunk by
chunk into a temporary folder (plain writes at file offsets, so writing does not grow resident
memory either), then iterates it once with `ParticleDataset.minibatches` (shuffled, prefetching
thread) and prints the peak resident set size (VmHWM) and throughput. As a peer it then reads the
same batches through `mrcfile.mmap` (`data[indices]`, no page release) and prints how far the
resident set grows that way. The folder is removed at the end.

    python bench/io_stream.py [--n-images 200000] [--box 128] [--batch-size 256] [--folder /tmp]
"""

import argparse
import pathlib
import shutil
import tempfile
import time

import mrcfile
import numpy as np

from atomicspi.io import load_particles


def memory_in_megabytes() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, from /proc."""
    values = {}
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = float(rest.split()[0]) / 1024
    return values


def write_stack(path: pathlib.Path, n_images: int, box: int, chunk: int = 1000) -> None:
    with mrcfile.new_mmap(path, shape=(n_images, box, box), mrc_mode=2, overwrite=True) as handle:
        handle.set_image_stack()
        handle.voxel_size = 1.0
        offset = handle.header.nbytes + int(handle.header.nsymbt)
    base = np.random.default_rng(0).standard_normal((chunk, box, box), dtype=np.float32)
    with open(path, "r+b") as file:
        file.seek(offset)
        for start in range(0, n_images, chunk):
            count = min(chunk, n_images - start)
            file.write((base[:count] + np.float32(start // chunk)).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200_000)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--folder", default=None, help="where to put the temporary stack (default: system temp)")
    arguments = parser.parse_args()

    folder = pathlib.Path(tempfile.mkdtemp(prefix="atomicspi-io-bench-", dir=arguments.folder))
    try:
        path = folder / "stack.mrcs"
        started = time.perf_counter()
        write_stack(path, arguments.n_images, arguments.box)
        size_gb = path.stat().st_size / 1e9
        print(f"wrote {arguments.n_images} images of {arguments.box}² ({size_gb:.1f} GB) in {time.perf_counter() - started:.0f} s; "
              f"memory after writing: {memory_in_megabytes()}")

        dataset = load_particles(path)
        started = time.perf_counter()
        sums = {"ours": 0.0, "ours, second pass": 0.0, "peer": 0.0}
        seen = 0
        for batch in dataset.minibatches(arguments.batch_size, seed=0, shuffle=True, prefetch=2):
            sums["ours"] += float(batch.images[:, 0, 0].sum(dtype=np.float64))
            seen += len(batch.indices)
        seconds = time.perf_counter() - started
        ours = memory_in_megabytes()
        print(f"atomicspi minibatches: {seen} images in {seconds:.1f} s ({seen / seconds:.0f} images/s, "
              f"{seen * arguments.box**2 * 4 / seconds / 1e9:.2f} GB/s); peak resident {ours['VmHWM']:.0f} MB, "
              f"now {ours['VmRSS']:.0f} MB")

        started = time.perf_counter()
        for batch in dataset.minibatches(arguments.batch_size, seed=0, shuffle=True, prefetch=2):
            sums["ours, second pass"] += float(batch.images[:, 0, 0].sum(dtype=np.float64))
        seconds = time.perf_counter() - started
        print(f"atomicspi minibatches, second pass: {seen / seconds:.0f} images/s; peak resident {memory_in_megabytes()['VmHWM']:.0f} MB")

        order = np.random.default_rng([0, 0]).permutation(arguments.n_images)
        before = memory_in_megabytes()["VmRSS"]
        started = time.perf_counter()
        with mrcfile.mmap(path, mode="r") as handle:
            for start in range(0, arguments.n_images, arguments.batch_size):
                indices = np.sort(order[start : start + arguments.batch_size])
                sums["peer"] += float(np.asarray(handle.data[indices], dtype=np.float32)[:, 0, 0].sum(dtype=np.float64))
            peer = memory_in_megabytes()
        seconds = time.perf_counter() - started
        print(f"peer mrcfile.mmap data[indices]: {seconds:.1f} s ({arguments.n_images / seconds:.0f} images/s); "
              f"resident grew from {before:.0f} MB to {peer['VmRSS']:.0f} MB")
        print(f"checksums of pixel [0, 0] over all images (must agree): {sums}")
        print(f"RESULT peak resident memory while streaming: {ours['VmHWM']:.0f} MB "
              f"({'under' if ours['VmHWM'] < 1024 else 'OVER'} 1 GB)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
