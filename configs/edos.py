"""Xtal2DoS on electronic DoS in the Mat2Spec layout (128 points, -4..4 eV).

`--config.data.path=/path/to/dir` (holding label_edos/ and materials_with_edos/);
without a path the small embedded sample (164 crystals) is used.
"""
from configs import phdos


def get_config():
  config = phdos.get_config()
  data = config.data
  data.format = "mat2spec"
  data.path = ""
  data.l_y = 128
  data.grid_start = -3.96875      # bin centres, 0.0625 eV apart
  data.grid_stop = 3.96875
  data.grid_unit = "eV"
  data.kind = "electronic"
  config.train.batch_size = 32
  config.train.num_epochs = 60    # phdos's 30 was chosen on phonon data only
  return config
