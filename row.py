import sys, tempfile
from pathlib import Path
sys.path.insert(0, "bench")
import train_step as ts
from onellm.instruct_data.synth import synthesize
from onellm.train.common import make_accelerator, load_start, build_data
from onellm.instruct_data.collator import Collator
acc = make_accelerator()
with tempfile.TemporaryDirectory() as tmp:
    corpus = Path(tmp) / "c"
    synthesize(corpus, per_modality=12, seed=0, modalities=["image"], workers=1)
    stage = ts.stage_config("small", sys.argv[1], corpus, Path(tmp) / "o", True, False)
    model, processor = load_start(stage)
    data = build_data(stage, processor, acc)
    col = Collator(processor)
    for k in range(4):
        ids, lab = col.encode(data.train[k])
        print(len(ids), repr(processor.tokenizer.decode(ids)))
