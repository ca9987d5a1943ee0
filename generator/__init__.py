"""Generator: diffusers pipelines, sampler names, txt2img/img2img with every parameter recorded, job worker, reproduce.

Entry points: `generator.loading.load_pipeline`, `generator.service.generate_images`,
`generator.worker.run_worker`, `generator.reproduce.reproduce_image`; the CLI lives in `generator.commands`.
"""
