"""`python -m parabench …`: the same command as `parabench …`, for launchers that start modules
(`torchrun --nproc_per_node 2 -m parabench train …`, `accelerate launch -m parabench train …`)."""

from parabench.cli import main

if __name__ == "__main__":
    main()
