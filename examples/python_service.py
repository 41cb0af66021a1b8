"""Embedding sana-deploy in your own Python service: load once, call from many threads.

python examples/python_service.py            # sana-tiny on CPU, 4 threads, writes out_*.png
"""

from __future__ import annotations

import concurrent.futures as cf

from sana_deploy.serve import ImageRequest, SharedPipeline, load_pipeline


def main() -> None:
    shared = SharedPipeline(load_pipeline("sana-tiny"))  # engines/weights loaded once
    requests = [ImageRequest(f"a watercolor fox, variant {i}", 1, 512, 512, 4, 4.5, seed=i) for i in range(4)]
    with cf.ThreadPoolExecutor(4) as pool:  # calls are serialised inside; results do not depend on the thread
        for i, images in enumerate(pool.map(lambda r: shared.generate([r])[0], requests)):
            images[0].save(f"out_{i}.png")
            print(f"out_{i}.png {images[0].size}")


if __name__ == "__main__":
    main()
