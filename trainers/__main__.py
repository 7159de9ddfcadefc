"""``python -m trainers METHOD MODEL.onnx ...``: the same commands as ``onnxoto train``
(see ``trainers.cli``); kept for ``torchrun -m trainers``."""

from trainers.cli import main

if __name__ == "__main__":
    main()
