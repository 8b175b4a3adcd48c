"""The verifiable safety world (DESIGN §10): a synthetic language where helpfulness and harm
are exact, known functions, so the whole Safe RLHF pipeline runs on a CPU in minutes and every
claim is checked against ground truth. See ``docs/world.md``.

    generate_world(out_dir, seed=0, noise=0.0, **sizes) -> dict   write the data sets
    World.load(out_dir) / World.default()                          rules + oracles
    world.helpfulness(prompt, response), world.harm(prompt, response), world.prompt_info(prompt)
    world.always_refuse(), world.always_comply(), world.ideal(), world.demonstrator(seed)
"""

from saferlhf.data.world.generate import DEFAULT_SIZES, generate_world
from saferlhf.data.world.language import PKU_HARM_CATEGORIES, default_spec, vocabulary
from saferlhf.data.world.oracles import Analysis, PromptInfo, ScriptedPolicy, Topic, World
from saferlhf.data.world.responses import DemonstratorPolicy

__all__ = [
    "DEFAULT_SIZES",
    "PKU_HARM_CATEGORIES",
    "Analysis",
    "DemonstratorPolicy",
    "PromptInfo",
    "ScriptedPolicy",
    "Topic",
    "World",
    "default_spec",
    "generate_world",
    "vocabulary",
]
