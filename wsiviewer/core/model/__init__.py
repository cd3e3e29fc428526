"""The model: what it is, its weights, and running it fast.

- :mod:`.cards`: model cards (``<name>.json``), found in the shipped and the user's models
  folders, read and checked without torch;
- :mod:`.networks`: the architectures (CancerNet, ResNet-8), registered by name, and the
  :class:`~.networks.PatchClassifier` that applies a card (normalisation, calibration,
  softmax);
- :mod:`.weights`: safetensors weights checked against the card's sha256; writing a model;
- :mod:`.onnx_export`: the classifier exported to ONNX once, cached by weights and card;
- :mod:`.engines`: ONNX Runtime on the CPU, torch on CUDA, each checked against eager torch;
- :mod:`.predictor`: a card applied to batches of patches on the chosen device.

torch is imported by :mod:`.networks`, :mod:`.weights`, :mod:`.onnx_export`,
:mod:`.engines` and :mod:`.predictor` only: listing models stays cheap.
"""
