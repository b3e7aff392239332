//! Learning-rate schedules and the optimiser groups' rates at the steps that define them.

use mixtures::{Recipe, Schedule, Training, Warmup};
use model::train::{GroupLrs, LrSchedule, linear_warmup};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn schedule(kind: Schedule, warmup: u64, total: u64) -> LrSchedule {
    LrSchedule {
        kind,
        base: 2.0,
        warmup,
        timescale: warmup.max(1),
        total,
        cooldown: 0,
        offset: 0,
        vit_warmup: 0,
    }
}

#[test]
fn warmup_is_linear_and_reaches_the_base_rate_on_its_last_step() {
    for kind in [
        Schedule::Rsqrt,
        Schedule::Cosine,
        Schedule::Linear,
        Schedule::Constant,
    ] {
        let s = schedule(kind, 10, 110);
        assert!(close(s.lr(0), 0.2), "{kind}: first step gets 1/10");
        assert!(close(s.lr(4), 1.0), "{kind}: halfway");
        assert!(close(s.lr(9), 2.0), "{kind}: last warm-up step");
    }
    assert!(close(linear_warmup(0, 0), 1.0));
    assert!(close(linear_warmup(500, 100), 1.0));
}

#[test]
fn decays_after_warmup() {
    let cosine = schedule(Schedule::Cosine, 10, 110);
    assert!(close(cosine.lr(10), 2.0));
    assert!(
        close(cosine.lr(60), 1.0),
        "half way through the decay: half the rate"
    );
    assert!(close(
        cosine.lr(35),
        2.0 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())
    ));
    assert!(cosine.lr(109) > 0.0 && cosine.lr(109) < 2e-3);
    assert!(
        close(cosine.lr(500), 0.0),
        "past the planned end it stays at zero"
    );

    let linear = schedule(Schedule::Linear, 10, 110);
    assert!(close(linear.lr(60), 1.0));
    assert!(close(linear.lr(85), 0.5));

    let constant = schedule(Schedule::Constant, 10, 110);
    assert!(close(constant.lr(100_000), 2.0));

    let rsqrt = schedule(Schedule::Rsqrt, 100, 1000);
    assert!(close(rsqrt.lr(99), 2.0));
    assert!(close(rsqrt.lr(399), 1.0), "sqrt(100 / 400)");
    assert!(close(rsqrt.lr(9999), 0.2), "sqrt(100 / 10000): no end");
}

#[test]
fn rsqrt_timescale_sets_how_fast_it_decays() {
    // big_vision's form: 1/sqrt(2) of the peak `timescale` steps after the warm-up.
    let slow = LrSchedule {
        timescale: 10_000,
        ..schedule(Schedule::Rsqrt, 100, 1000)
    };
    assert!(close(slow.lr(99), 2.0), "end of the warm-up");
    assert!(close(slow.lr(10_099), 2.0 / 2f64.sqrt()));
    assert!(close(slow.lr(30_099), 1.0), "sqrt(10000 / 40000)");
    // Left out, the timescale is the warm-up: the classic sqrt(warmup / step).
    let mut training = Recipe::Pretrain.defaults();
    training.warmup = Warmup::Steps(100);
    let default = LrSchedule::from_training(&training, 1000);
    assert_eq!(default.timescale, 100);
    assert!(close(default.lr(399) / training.lr, 0.5), "sqrt(100 / 400)");
    training.timescale = Some(10_000);
    training.cooldown = 200;
    let set = LrSchedule::from_training(&training, 1000);
    assert_eq!((set.timescale, set.cooldown), (10_000, 200));
    let plain = LrSchedule { cooldown: 0, ..set };
    assert!(close(set.lr(799), plain.lr(799)), "before the cool-down");
    assert!(
        close(set.lr(900), plain.lr(900) * 0.5),
        "half-way through it"
    );
}

#[test]
fn rsqrt_cools_down_linearly_over_its_last_steps() {
    let s = LrSchedule {
        cooldown: 200,
        ..schedule(Schedule::Rsqrt, 100, 1000)
    };
    let plain = schedule(Schedule::Rsqrt, 100, 1000);
    assert!(close(s.lr(799), plain.lr(799)), "before the cool-down");
    assert!(
        close(s.lr(800), plain.lr(800)),
        "first cool-down step at full rate"
    );
    assert!(close(s.lr(900), plain.lr(900) * 0.5));
    assert!(close(s.lr(999), plain.lr(999) / 200.0));
}

#[test]
fn warmup_fractions_resolve_against_the_stage() {
    let t = Training {
        lr: 1e-3,
        schedule: Schedule::Cosine,
        warmup: Warmup::Fraction(0.05),
        ..Recipe::Transfer.defaults()
    };
    let s = LrSchedule::from_training(&t, 200);
    assert_eq!(s.warmup, 10);
    assert_eq!(s.total, 200);
    assert!(close(s.lr(9), 1e-3));
}

#[test]
fn the_image_encoder_warms_up_more_slowly_and_can_be_frozen() {
    let t = Training {
        lr: 1.0,
        schedule: Schedule::Constant,
        warmup: Warmup::Steps(10),
        vit_warmup: Warmup::Steps(100),
        ..Recipe::Pretrain.defaults()
    };
    let at = |step| GroupLrs::at(&t, &LrSchedule::from_training(&t, 1000), step);
    assert!(close(at(0).llm, 0.1) && close(at(0).projector, 0.1));
    assert!(close(at(0).vision, 0.1 * 0.01), "both warm-ups multiply");
    assert!(close(at(9).llm, 1.0));
    assert!(close(at(9).vision, 0.1));
    assert!(close(at(49).vision, 0.5));
    assert!(close(at(99).vision, 1.0));
    let frozen = Training {
        freeze_vit: true,
        ..t
    };
    let lrs = GroupLrs::at(&frozen, &LrSchedule::from_training(&frozen, 1000), 50);
    assert_eq!(lrs.vision, 0.0);
    assert!(close(lrs.llm, 1.0));
    let slower = Training {
        image_lr_scale: 0.25,
        ..t
    };
    let lrs = GroupLrs::at(&slower, &LrSchedule::from_training(&slower, 1000), 49);
    assert!(close(lrs.llm, 1.0));
    assert!(close(lrs.projector, 0.25));
    assert!(
        close(lrs.vision, 0.25 * 0.5),
        "the scale and the encoder's warm-up multiply"
    );
}

#[test]
fn a_continued_rsqrt_carries_on_where_the_stage_before_ended() {
    let first = LrSchedule {
        vit_warmup: 300,
        ..schedule(Schedule::Rsqrt, 100, 200)
    };
    let second = first.continued(500, 0);
    assert_eq!((second.offset, second.total), (200, 500));
    for step in [0, 1, 99, 499] {
        assert!(close(second.lr(step), first.lr(200 + step)), "step {step}");
    }
    assert!(
        close(second.lr(199), 1.0),
        "sqrt(100 / 400), as if one stage"
    );
    assert!(
        close(second.vit_factor(0), 201.0 / 300.0),
        "the encoder's warm-up carries on too"
    );
    assert!(close(second.vit_factor(99), 1.0));
    // A third stage continues the second; its cool-down is its own.
    let third = second.continued(100, 50);
    assert_eq!(third.offset, 700);
    assert!(close(third.lr(49), first.lr(749)));
    assert!(close(third.lr(75), first.lr(775) * 25.0 / 50.0));
    assert!(close(third.lr(99), first.lr(799) / 50.0));
}

#[test]
fn stages_that_continue_follow_the_first_stages_schedule_in_a_mixture() {
    let spec = r#"
        [sources.s]
        data = "s.parquet"
        [tasks.t]
        source = "s"
        prefix = "p"
        suffix = "{x}"
        [[stages]]
        name = "one"
        batch_size = 10
        budget = { examples = 1000 }
        weights = { t = 1 }
        train = { lr = 1e-3, warmup = { steps = 20 }, vit_warmup = { fraction = 0.5 } }
        [[stages]]
        name = "two"
        batch_size = 10
        budget = { examples = 500 }
        weights = { t = 1 }
        train = { continues = true, cooldown = 50, image_lr_scale = 0.1 }
        [[stages]]
        name = "three"
        batch_size = 10
        budget = { examples = 100 }
        weights = { t = 1 }
        train = { lr = 1e-5, schedule = "constant" }
    "#;
    let mixture = mixtures::Mixture::from_toml_str(spec).unwrap();
    let one = model::train::stage_schedule(&mixture, 0).unwrap();
    let two = model::train::stage_schedule(&mixture, 1).unwrap();
    let three = model::train::stage_schedule(&mixture, 2).unwrap();
    assert_eq!((one.total, one.vit_warmup), (100, 50));
    assert_eq!((two.offset, two.total, two.cooldown), (100, 50, 50));
    assert_eq!((two.warmup, two.vit_warmup), (20, 50), "the first stage's");
    assert!(close(two.lr(0), 1e-3 * (20.0f64 / 101.0).sqrt()));
    assert_eq!(
        three.offset, 0,
        "a stage that does not continue starts its own"
    );
    let training = mixture.stage_training(1);
    assert_eq!((training.lr, training.image_lr_scale), (1e-3, 0.1));
    let lrs = GroupLrs::at(&training, &two, 0);
    assert!(close(lrs.projector, 0.1 * lrs.llm) && close(lrs.vision, lrs.projector));
}
