"""Default config: Xtal2DoS on the embedded DFPT phonon-DoS benchmark (51 points,
0-1000 cm^-1; 1,521 crystals, the data of the paper's Table 1).

Sized so a full run fits a 2-core CPU session. Override on the command line, e.g.
`--config.train.num_epochs=5 --config.model.decoder=rnn`. The universal-potential set
(absolute DoS, C_v labels) is `configs/phdos_chgnet.py`.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.format = "phonondos_csv"   # ase_db | mat2spec | phonondos_csv
  data.path = ""                  # "" = the embedded set of the format: DFPT benchmark CSV
                                  # (phonondos_csv), universal-potential db (ase_db)
  data.label_key = "dos"          # key of the label array in row.data (ase_db)
  data.l_y = 51                   # number of DoS points
  data.grid_start = 0.0           # first grid point (cm^-1 for phonons, eV for electrons)
  data.grid_stop = 1000.0         # last grid point (inclusive)
  data.grid_unit = "cm^-1"
  data.kind = "phonon"            # phonon | electronic (selects the derived physics)
  data.radius = 8.0               # neighbour cutoff, Angstrom
  data.max_num_nbr = 12           # nearest neighbours kept per atom (0 = every neighbour
                                  # within radius: the radius graph of configs/ablations/e3nn*)
  data.gaussian_step = 0.2        # Angstrom; edge feature = exp(-(d-mu)^2/step^2), mu = 0..radius
  data.scaling = "normalized_sum"  # normalized_sum | normalized_max | standardized
  data.split = (0.8, 0.1, 0.1)    # train / validation / test fractions (1,217/152/152 on
                                  # the DFPT set: the paper's split sizes)
  data.split_seed = 0
  data.num_folds = 0              # > 1: k-fold cross-validation; test = fold `fold`,
  data.fold = 0                   # validation = split[1] of the crystals from the rest
  data.split_file = ""            # a JSON file of id lists under train / validation (or val) /
                                  # test (another run's splits.json, a published split): used
                                  # instead of split / split_seed / num_folds
  data.train_fraction = 1.0       # train on this seeded share of the train split (learning
                                  # curves; validation and test stay whole)
  data.cache_dir = ""             # "" = ~/.cache/xtal2dos_jax
  data.limit = 0                  # use only the first N crystals (0 = all); for quick checks
  data.exclude_ids = ""           # leave these ids out: a file (JSON list / one per line)
                                  # or file.json:key1,key2 (another run's
                                  # splits.json:validation,test keeps its crystals out)

  config.model = model = ml_collections.ConfigDict()
  model.encoder = "unimp"         # unimp | gat | e3nn | gatgnn | graph_network |
                                  # dostransformer_gnn
  model.decoder = "transformer"   # transformer | rnn | rnn_attn | chunk_rnn | chunk_rnn_attn |
                                  # mlp | dostransformer | mat2spec | gatgnn_head
  model.atom_features = "cgcnn"   # cgcnn | cgcnn_mass: the element vectors the unimp, gat and
                                  # gatgnn encoders embed (cgcnn_mass adds ln m and 1/sqrt m)
  model.d_model = 128
  model.num_heads = 4
  model.encoder_layers = 3
  model.decoder_layers = 3
  model.ff_dim = 512
  model.encoder_dropout = 0.1
  model.decoder_dropout = 0.0
  model.causal = True             # False reproduces the public PyTorch code's unmasked decoder
  model.source_attention = True   # False: decoder without attention to the atoms (ablation)
  model.position_embedding = "onehot"  # onehot | learned
  model.chunk_size = 8            # chunk_rnn / chunk_rnn_attn only
  model.mlp_energy_embedding = False  # mlp only: one MLP over [energy embedding; context]
  model.composition_activation = "none"  # none | leaky_relu (slope 0.2, as the public code)
  model.e3nn_variant = "chen2021"  # e3nn only: chen2021 (Chen et al.'s point convolutions) |
                                  # gate_points (e3nn's gate_points_2101: node attributes,
                                  # self-connection, Gaussian radial basis; "E3NN-new")
  model.e3nn_irreps = "32x0e+32x0o+32x1e+32x1o"  # e3nn only: hidden irreps of each layer
  model.e3nn_lmax = 1             # e3nn only: spherical harmonics l <= lmax (1 or 2) of the edges
  model.e3nn_num_basis = 10       # e3nn only: Bessel (chen2021) / Gaussian (gate_points)
                                  # functions of the edge length (0..radius)
  model.e3nn_radial_hidden = 64   # e3nn only: width of the radial MLPs
  model.e3nn_num_neighbors = 28.0  # e3nn only: message sums / sqrt(this); ~ mean in-degree
                                  # (28.3 on the DFPT set's 5 Å radius graph)
  model.mat2spec_latent_dim = 128  # mat2spec only: width D of each Gaussian latent
  model.mat2spec_num_components = 10  # mat2spec only: K Gaussians of the crystal mixture
  model.mat2spec_emb_size = 512   # mat2spec only: decoded embedding / energy-level embedding width
  model.mat2spec_label_weight = 1.0  # mat2spec only: weight of the label branch's DoS loss
  model.mat2spec_kl_weight = 1.1  # mat2spec only: weight of the crystal/label latent KL
  model.mat2spec_contrastive_weight = 0.1  # mat2spec only: weight of the contrastive loss
  model.mat2spec_temperature = 1.0  # mat2spec only: tau of the contrastive loss
  model.dostransformer_prompt = "system"  # dostransformer only: the output returned, with the
                                  # crystal-system prompt ("system") or without ("none")
  model.dostransformer_prompt_free_weight = 0.0  # dostransformer only: > 0 also trains the
                                  # prompt-free output, its DoS loss x this added (the public
                                  # code's joint loss: 1.0); needs prompt "system"
  model.dostransformer_memory_norm = True  # dostransformer only: layer-normalise the atom
                                  # states before each cross-attention (as the public code)
  model.dtype = "float32"         # float32 | bfloat16 | bf16_matmul (params stay float32)

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 64           # global batch (crystals per step, across all devices)
  train.num_epochs = 30           # cosine length: anneals before early stopping would (BUILD_NOTES.md §2)
  train.optimizer = "adamw"       # adam | adamw | sgd (momentum 0.9)
  train.learning_rate = 1e-3      # peak (cosine); the factor of the noam schedule
  train.weight_decay = 1e-4
  train.adam_b2 = 0.999           # Adam(W) second-moment decay
  train.adam_eps = 1e-8
  train.schedule = "cosine"       # cosine | exponential | noam (the public Xtal2DoS code's)
  train.warmup_epochs = 2         # cosine, exponential
  train.decay_rate = 0.95         # exponential: learning rate x this per epoch after warmup
  train.cosine_restarts = 1       # cosine: number of cycles after warmup
  train.warmup_steps = 300        # noam
  train.noam_decay_epochs = 0     # noam: > 0 divides by noam_decay_rate^(step/that) after it
  train.noam_decay_rate = 4.0
  train.grad_clip = 1.0           # global-norm clip
  train.ema_decay = 0.0           # > 0: evaluate/select/predict with an EMA of the weights
  train.loss = "kl"               # kl | wd | mae | mse
  train.patience = 15             # early stopping, in epochs without validation improvement
  train.patience_warmup_epochs = 0  # epochs before early stopping starts counting
  train.select_on = "loss"        # loss | r2 | wd: validation score for best checkpoint + patience
  train.monitor_test = False      # also score the test split every epoch into metrics.jsonl
                                  # ("test_monitor"), to measure what choosing the epoch on
                                  # test would report; selection never reads it
  train.checkpoint_every = 1      # epochs
  train.keep_checkpoints = 2
  train.progress = True
  train.init_from = ""            # fine-tuning: a workdir whose best weights start this run
  train.freeze = "none"           # none | encoder (no updates to the graph encoder)
  train.ensemble_size = 1         # > 1: K members (seeds seed..seed+K-1, own init, dropout and
                                  # data order) trained as one vmapped program; evaluate and
                                  # predict report their mean and spread
  return config
