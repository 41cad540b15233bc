"""Professor and nurse biographies for SHIFT (Marks et al., section 4), after Bias in Bios
(De-Arteaga et al., 2019).

SHIFT trains a linear probe for profession on an *ambiguous* set where profession and gender
are perfectly correlated (male professors, female nurses), so the probe can learn gender
instead; ablating the spurious (gender) features should recover profession accuracy on a
*balanced* set and on each of the four groups. This module supplies those sets as a
``pandas.DataFrame`` with columns ``text`` (str), ``profession`` (0 = professor, 1 = nurse),
``gender`` (0 = male, 1 = female) and ``group`` ("male professor", ...).

Three sources give the same columns:

- ``"offline"`` (default): biographies generated here from hand-written templates and name
  lists (no downloads, no third-party text; see docs/bias_in_bios.md), built like Bias in
  Bios' ``hard_text``: no sentence naming the occupation, profession shown only by a few
  content cues amid vocabulary both professions share (nurse educators, health-science
  professors, clinics and universities on both sides), gender by pronouns and first names in
  nearly every sentence.
- ``"hub"``: the real ``LabHC/bias_in_bios`` data set through ``datasets.load_dataset``.
- a local ``.parquet`` / ``.jsonl`` file (or ``{"train": path, "validation": path, "test":
  path}``) in the hub schema: ``hard_text``, ``profession`` (professor = 21, nurse = 13),
  ``gender``.
"""

from __future__ import annotations

import functools
import json
import numbers
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

import pandas as pd

Part = Literal["train", "validation", "test"]
PARTS: tuple[Part, ...] = get_args(Part)

GROUPS: tuple[str, ...] = ("male professor", "female professor", "male nurse", "female nurse")
"""Group names: ``f"{gender} {profession}"``, in (gender, profession) order."""

SPLITS: dict[str, tuple[str, ...]] = {
    "ambiguous": ("male professor", "female nurse"),
    "balanced": GROUPS,
    **{group: (group,) for group in GROUPS},
}
"""Split name -> the groups it holds (each truncated to the same count)."""

SOURCES = ("offline", "hub")
HUB_NAME = "LabHC/bias_in_bios"
HUB_PROFESSIONS = {21: 0, 13: 1}
"""Bias in Bios profession ids kept -> ours (21 = professor -> 0, 13 = nurse -> 1)."""
HUB_FIELDS = ("hard_text", "profession", "gender")
HUB_SPLITS: dict[str, str] = {"train": "train", "validation": "dev", "test": "test"}
"""Our part -> the hub data set's split (its validation split is called "dev")."""

OFFLINE_SIZES: dict[Part, int] = {"train": 2000, "validation": 250, "test": 500}
"""Generated biographies per group and part (disjoint texts)."""

Source = str | Path | Mapping[str, str | Path]

# ---------------------------------------------------------------------------------------------
# Name lists and facts (hand-written; common first names, real institutions as plain facts)

MALE_NAMES = (
    "James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel "
    "Matthew Anthony Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy "
    "Ronald Edward Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin "
    "Scott Brandon Benjamin Samuel Gregory Alexander Patrick Frank Raymond Jack Dennis Jerry "
    "Peter Henry Adam Nathan Douglas Zachary Kyle Walter Ethan Jeremy"
).split()
FEMALE_NAMES = (
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy "
    "Betty Margaret Sandra Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah "
    "Stephanie Rebecca Sharon Laura Cynthia Kathleen Amy Angela Shirley Anna Brenda Pamela Emma "
    "Nicole Helen Samantha Katherine Christine Debra Rachel Carolyn Janet Catherine Maria "
    "Heather Diane Ruth Julie Olivia Joyce Victoria Kelly Christina Lauren Joan Evelyn"
).split()
SURNAMES = (
    "Smith Johnson Williams Brown Jones Miller Davis Garcia Rodriguez Wilson Martinez Anderson "
    "Taylor Thomas Moore Jackson Martin Lee Thompson White Harris Clark Lewis Robinson Walker "
    "Young Allen King Wright Scott Hill Green Adams Baker Nelson Carter Mitchell Roberts Turner "
    "Phillips Campbell Parker Evans Edwards Collins Stewart Murphy Cook Rogers Morgan Cooper "
    "Reed Bailey Bell Kelly Howard Ward Cox Patel Nguyen Kim Chen Singh Hughes Foster"
).split()
CITIES = (
    "Boston",
    "Chicago",
    "Seattle",
    "Denver",
    "Atlanta",
    "Austin",
    "Portland",
    "Philadelphia",
    "San Diego",
    "Minneapolis",
    "Pittsburgh",
    "Baltimore",
    "Cleveland",
    "Nashville",
    "Phoenix",
    "Toronto",
    "Vancouver",
    "Montreal",
    "London",
    "Manchester",
    "Edinburgh",
    "Dublin",
    "Sydney",
    "Melbourne",
    "Auckland",
    "Houston",
    "Detroit",
    "Sacramento",
    "Milwaukee",
    "Glasgow",
    "Leeds",
    "Ottawa",
)
UNIVERSITIES = (
    "the University of Michigan",
    "Stanford University",
    "the University of Toronto",
    "Ohio State University",
    "the University of Washington",
    "Boston University",
    "the University of Edinburgh",
    "McGill University",
    "the University of Melbourne",
    "Northwestern University",
    "the University of Texas at Austin",
    "Duke University",
    "the University of Chicago",
    "Cornell University",
    "the University of Manchester",
    "Rutgers University",
    "the University of Minnesota",
    "Johns Hopkins University",
    "the University of Sydney",
    "Arizona State University",
    "the University of Pittsburgh",
    "Vanderbilt University",
    "the University of British Columbia",
    "Emory University",
    "the University of Leeds",
    "Georgetown University",
    "Purdue University",
    "the University of Glasgow",
    "Trinity College Dublin",
    "the University of Auckland",
)
HOSPITALS = (
    "St. Mary's Hospital",
    "Mercy General Hospital",
    "Riverside Medical Center",
    "City General Hospital",
    "Lakeview Community Hospital",
    "Memorial Regional Hospital",
    "St. Joseph's Medical Center",
    "Children's Hospital",
    "Good Samaritan Hospital",
    "Valley Health Medical Center",
    "Northside Hospital",
    "Providence Hospital",
    "the Royal Infirmary",
    "University Hospital",
    "Grace Community Hospital",
    "St. Luke's Hospital",
    "Westside Regional Medical Center",
    "Baptist Memorial Hospital",
    "the county hospital",
    "Highland General Hospital",
    "Sacred Heart Hospital",
    "the Veterans Affairs medical center",
)
CLINICS = (
    "a community health clinic",
    "a family practice clinic",
    "an outpatient dialysis center",
    "a rural health clinic",
    "an urgent care center",
    "a walk-in clinic",
    "a women's health clinic",
    "a cancer treatment center",
)

# field, scholar, topics, courses, methods
FIELDS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "economics",
        "economist",
        ("labor markets", "monetary policy", "income inequality", "trade and development"),
        ("microeconomics", "econometrics"),
        ("field experiments", "large administrative data sets"),
    ),
    (
        "history",
        "historian",
        ("medieval Europe", "the history of science", "colonial trade", "the Cold War"),
        ("modern European history", "historical methods"),
        ("archival research", "oral histories"),
    ),
    (
        "physics",
        "physicist",
        ("quantum materials", "particle physics", "superconductivity", "laser optics"),
        ("classical mechanics", "quantum mechanics"),
        ("laboratory experiments", "numerical simulations"),
    ),
    (
        "chemistry",
        "chemist",
        ("catalysis", "organic synthesis", "battery materials", "protein folding"),
        ("organic chemistry", "physical chemistry"),
        ("spectroscopy", "computational models"),
    ),
    (
        "biology",
        "biologist",
        ("gene regulation", "coral reef ecology", "plant genetics", "the evolution of insects"),
        ("molecular biology", "evolution"),
        ("genome sequencing", "long-term field studies"),
    ),
    (
        "computer science",
        "computer scientist",
        ("machine learning", "computer security", "distributed systems", "programming languages"),
        ("algorithms", "operating systems"),
        ("formal proofs", "large-scale experiments"),
    ),
    (
        "mathematics",
        "mathematician",
        ("number theory", "algebraic geometry", "probability theory", "dynamical systems"),
        ("linear algebra", "real analysis"),
        ("rigorous proofs", "computer-assisted proofs"),
    ),
    (
        "sociology",
        "sociologist",
        ("urban poverty", "immigration", "social networks", "religion in public life"),
        ("social theory", "research methods"),
        ("surveys", "ethnographic fieldwork"),
    ),
    (
        "psychology",
        "psychologist",
        ("child development", "memory", "decision making", "language acquisition"),
        ("cognitive psychology", "statistics for psychology"),
        ("laboratory experiments", "longitudinal studies"),
    ),
    (
        "linguistics",
        "linguist",
        ("syntax", "endangered languages", "sound change", "bilingualism"),
        ("phonetics", "syntactic theory"),
        ("corpus analysis", "fieldwork with native speakers"),
    ),
    (
        "philosophy",
        "philosopher",
        ("the philosophy of mind", "ethics", "the philosophy of science", "logic"),
        ("moral philosophy", "symbolic logic"),
        ("conceptual analysis", "formal models"),
    ),
    (
        "political science",
        "political scientist",
        ("electoral systems", "international relations", "public opinion", "democratization"),
        ("comparative politics", "American government"),
        ("surveys", "statistical models"),
    ),
    (
        "anthropology",
        "anthropologist",
        ("kinship", "food and culture", "the archaeology of early cities", "migration"),
        ("cultural anthropology", "archaeology"),
        ("ethnographic fieldwork", "excavations"),
    ),
    (
        "mechanical engineering",
        "engineer",
        ("robotics", "fluid dynamics", "wind turbines", "advanced manufacturing"),
        ("thermodynamics", "control systems"),
        ("wind tunnel experiments", "computer simulations"),
    ),
    (
        "English literature",
        "literary scholar",
        ("Victorian novels", "Shakespeare", "modern poetry", "the literature of the sea"),
        ("the British novel", "creative writing"),
        ("close reading", "archival research"),
    ),
    (
        "geology",
        "geologist",
        ("earthquakes", "volcanoes", "glaciers", "the formation of mountain ranges"),
        ("physical geology", "mineralogy"),
        ("field mapping", "satellite data"),
    ),
    (
        "statistics",
        "statistician",
        ("Bayesian inference", "causal inference", "clinical trial design", "time series"),
        ("probability", "statistical inference"),
        ("mathematical models", "simulation studies"),
    ),
    (
        "neuroscience",
        "neuroscientist",
        ("the neural basis of memory", "sleep", "brain development", "vision"),
        ("systems neuroscience", "neuroanatomy"),
        ("brain imaging", "electrophysiology"),
    ),
    (
        "astronomy",
        "astronomer",
        ("exoplanets", "galaxy formation", "black holes", "the origin of stars"),
        ("introductory astronomy", "astrophysics"),
        ("telescope observations", "computer simulations"),
    ),
    (
        "education",
        "education researcher",
        ("early literacy", "teacher training", "school reform", "mathematics education"),
        ("educational psychology", "curriculum design"),
        ("classroom studies", "randomized trials"),
    ),
)
AGENCIES = (
    "the National Science Foundation",
    "the National Institutes of Health",
    "the European Research Council",
    "the Department of Energy",
    "the Mellon Foundation",
    "the Spencer Foundation",
    "the Social Sciences and Humanities Research Council",
    "the Wellcome Trust",
)
JOURNALS = (
    "Nature",
    "Science",
    "the Proceedings of the National Academy of Sciences",
    "PLOS ONE",
    "Nature Communications",
    "the Annual Review of its field",
)
PRESSES = (
    "Oxford University Press",
    "Cambridge University Press",
    "MIT Press",
    "Princeton University Press",
    "the University of Chicago Press",
    "Yale University Press",
)
PROFESSOR_AWARDS = (
    "a CAREER award from the National Science Foundation",
    "a Guggenheim Fellowship",
    "a Sloan Research Fellowship",
    "the university's distinguished teaching award",
    "an early career prize from a national society",
    "a best paper award",
)

# specialty, unit, patients, care topics of the specialty
SPECIALTIES: tuple[tuple[str, str, str, tuple[str, str]], ...] = (
    (
        "critical care",
        "intensive care unit",
        "critically ill adults",
        ("ventilator care", "sedation management"),
    ),
    (
        "pediatric",
        "pediatric ward",
        "sick children and their families",
        ("pain management for children", "family education"),
    ),
    (
        "oncology",
        "oncology unit",
        "patients undergoing chemotherapy",
        ("symptom management during chemotherapy", "palliative care"),
    ),
    (
        "emergency",
        "emergency department",
        "patients with injuries and sudden illness",
        ("triage", "trauma care"),
    ),
    (
        "neonatal",
        "neonatal intensive care unit",
        "premature babies",
        ("breastfeeding support", "care of premature infants"),
    ),
    (
        "labor and delivery",
        "maternity ward",
        "expectant mothers and newborns",
        ("breastfeeding support", "birth preparation"),
    ),
    ("geriatric", "geriatric ward", "older patients", ("fall prevention", "dementia care")),
    (
        "cardiac",
        "cardiac care unit",
        "heart patients",
        ("cardiac rehabilitation", "medication safety"),
    ),
    (
        "surgical",
        "surgical ward",
        "patients recovering from surgery",
        ("wound care", "pain management after surgery"),
    ),
    (
        "psychiatric",
        "mental health unit",
        "patients with mental illness",
        ("crisis intervention", "medication safety"),
    ),
    (
        "orthopedic",
        "orthopedic ward",
        "patients recovering from joint replacements",
        ("early mobility after surgery", "wound care"),
    ),
    (
        "dialysis",
        "dialysis unit",
        "patients with kidney failure",
        ("kidney care", "patient education"),
    ),
    (
        "hospice",
        "palliative care unit",
        "patients at the end of life",
        ("palliative care", "pain management"),
    ),
    ("burn", "burn unit", "patients with severe burns", ("wound care", "infection prevention")),
    (
        "neurology",
        "stroke unit",
        "stroke patients",
        ("stroke rehabilitation", "swallowing assessment"),
    ),
)
CARE_TOPICS = (
    "wound care",
    "pain management",
    "infection prevention",
    "patient education",
    "fall prevention",
    "medication safety",
    "discharge planning",
    "palliative care",
    "diabetes education",
    "breastfeeding support",
    "pressure ulcer prevention",
)
CERTIFICATIONS = (
    "basic life support",
    "advanced cardiac life support",
    "pediatric advanced life support",
    "critical care nursing",
    "oncology nursing",
    "trauma nursing",
    "neonatal resuscitation",
)

HOBBIES = (
    "hiking",
    "cooking",
    "gardening",
    "photography",
    "cycling",
    "baking bread",
    "playing chess",
    "painting",
    "birdwatching",
    "playing the piano",
    "swimming",
    "reading mystery novels",
    "woodworking",
    "camping",
    "playing the guitar",
    "sailing",
)
LANGUAGES = ("Spanish", "French", "German", "Italian", "Portuguese", "Mandarin", "Japanese")
FAMILY = (
    "two children",
    "a daughter",
    "a son",
    "three children",
    "a dog",
    "two cats",
    "a rescue dog",
)

# ---------------------------------------------------------------------------------------------
# Shared and health vocabulary: what makes the two professions overlap (nursing faculty,
# medical and health-science professors, nurse educators, clinical research)

HEALTH_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nursing", ("health assessment", "nursing research")),
    ("medicine", ("internal medicine", "clinical reasoning")),
    ("public health", ("epidemiology", "global health")),
    ("nutrition", ("nutrition science", "community nutrition")),
    ("epidemiology", ("biostatistics", "chronic disease epidemiology")),
    ("kinesiology", ("exercise physiology", "motor control")),
    ("pharmacology", ("pharmacology", "drug development")),
    ("health policy", ("health economics", "health policy")),
    ("clinical psychology", ("abnormal psychology", "psychotherapy")),
    ("physical therapy", ("rehabilitation science", "anatomy")),
    ("gerontology", ("aging and health", "research methods")),
)
"""Health-science fields of professors: field, courses."""
HEALTH_TOPICS = (
    "patient safety",
    "infection prevention",
    "pain management",
    "diabetes care",
    "heart failure",
    "maternal health",
    "healthy aging",
    "cancer survivorship",
    "mental health care",
    "childhood obesity",
    "chronic disease management",
    "end-of-life care",
    "health disparities",
    "medication adherence",
    "stroke recovery",
    "sleep and health",
    "smoking cessation",
    "dementia care",
    "global health",
    "rural health",
)
"""Research topics of health-science professors and nurse educators, and clinical interests
of nurses: the same list on both sides."""
NURSING_COURSES = (
    "health assessment",
    "pharmacology",
    "community health",
    "pediatric care",
    "clinical skills",
    "research methods",
    "maternal and child health",
)
SETTINGS = (
    "emergency medicine",
    "home health",
    "long-term care",
    "pediatrics",
    "oncology",
    "intensive care",
    "labor and delivery",
    "community health",
    "mental health",
)
KIDS = ("two children", "three children", "a daughter", "a son", "twin boys", "two grown daughters")

# ---------------------------------------------------------------------------------------------
# Templates. {slot} is filled per biography; [text] is optional (kept with probability 1/2);
# <a|b|c> picks one alternative. {S} is the sentence subject (pronoun, first name, honorific
# and surname, or full name; capitalized), {s} the same in the middle of a sentence,
# {He}/{he}/{His}/{his}/{him} pronouns. Persona slots (degree, workplace, interests, ...) are
# themselves templates from PERSONAS, expanded once per biography.
#
# There is no opening sentence naming the occupation: Bias in Bios' ``hard_text`` is the
# biography with that first sentence removed.

SHARED_BODY: tuple[str, ...] = (
    "{S} <earned|received|completed> {degree} <from|at> {univ2}[ in {year2}].",
    "{S} graduated from {univ2}[ with honors][ in {year2}].",
    "{S} holds {degree} from {univ2}[ and {degree2} from {univ3}].",
    "{S} has <more than|over|nearly> {years} years of experience in {exp_area}.",
    "{S} <joined|came to> {workplace} in {year}[ after {n_small} years at {workplace2}].",
    "{S} has <worked|been> at {workplace} <since {year}|for {years} years>.",
    "Before joining {workplace}, {s} <worked|spent {n_small} years> at {workplace2}.",
    "{His} {interests} include {topic} and {topic2}.",
    "{S} is <particularly|especially> interested in {topic}.",
    "{S} is a member of the {assoc}[ and the {assoc2}].",
    "{S} <received|was awarded|won> {award}[ in {year2}].",
    "{S} has <spoken|given talks|presented {his} work> on {topic} at <national|international|"
    "regional> conferences.",
    "{S} serves on the {committee}[ at {workplace}].",
    "{S} enjoys working with {people}.",
    "{S} <mentors|supervises|trains> {trainees}[ at {workplace}].",
    "{S} teaches {teaching}.",
)
"""Sentences of every persona; the slots they fill differ, partly, by persona."""
PERSONAL_BODY: tuple[str, ...] = (
    "{S} lives in {city} with {his} {spouse}[ and {family}].",
    "{S} and {his} {spouse} have {kids}.",
    "{S} is <a proud|the> {parent} of {kids}.",
    "Outside of work, {s} enjoys {hobby}[ and {hobby2}].",
    "In {his} <free|spare> time, {s} enjoys {hobby}[ and spending time with {his} family].",
    "{S} <grew up|was born and raised> in {city2}.",
    "{S} speaks {lang}[ and {lang2}].",
    "{S} volunteers <at a local food bank|with a youth soccer league|at {his} church|at an "
    "animal shelter>.",
    "{S} and {his} {spouse} enjoy {hobby} and travel.",
)
"""Personal sentences (family, hobbies, home town, languages): no profession."""
PROFESSOR_TITLE: tuple[str, ...] = (
    "{S} has been a professor[ at {workplace}] <since {year}|for {years} years>.",
    "{S} became a full professor in {year}.",
    "Before becoming a professor, {s} worked <in industry|as a consultant|in private practice>.",
    "{S} was named professor of the year by {his} students[ in {year2}].",
)
NURSE_TITLE: tuple[str, ...] = (
    "{S} has been a nurse <since {year}|for {years} years>.",
    "{S} knew from an early age that {he} wanted to be a nurse.",
    "{S} <worked|has worked> as a <travel|school|hospice|home health|charge> nurse[ in {city}].",
    "{S} <began|started> {his} career as a nurse <at|in> {hospital2}.",
)
"""Rare sentences that do name the occupation (Bias in Bios bios restate it now and then)."""

PERSONAS: dict[str, dict] = {
    "academic": dict(
        profession=0,
        weight=0.75,
        degree=(
            "a PhD in {field}",
            "a doctorate in {field}",
            "a master's degree in {field}",
            "a bachelor's degree in {field}",
            "a PhD",
        ),
        exp_area=("teaching and research", "higher education", "{field} research", "{topic}"),
        workplace=("{univ}",),
        workplace2=("{univ3}",),
        interests=("research interests", "interests"),
        assoc=(
            "American Association for the Advancement of Science",
            "Royal Society of Canada",
            "British Academy",
            "Royal Society of Edinburgh",
            "American Academy of Arts and Sciences",
        ),
        award=PROFESSOR_AWARDS,
        committee=(
            "faculty senate",
            "graduate admissions committee",
            "curriculum committee",
            "research ethics board",
        ),
        trainees=("graduate students", "doctoral students", "undergraduate researchers"),
        people=("students", "students and colleagues"),
        teaching=(
            "<undergraduate|graduate|introductory> courses in {course}",
            "{course}[ and {course2}]",
        ),
        role=(
            "{His} research <focuses on|examines|explores> {topic}[ and {topic2}].",
            "{S} has published <widely|extensively|more than {n_pub} articles> on {topic}.",
            "{His} <most recent|latest|first> book, on {topic}, was published by {press}"
            "[ in {year2}].",
            "{His} work has been <funded|supported> by {agency}[ and {agency2}].",
            "{S} <spent a year as|was> a visiting scholar at {univ3}[ in {year2}].",
            "{His} <lab|group|team> uses {method} to study {topic}.",
            "{S} <serves|has served> as <an editor|an associate editor|a reviewer> for {journal}.",
        ),
    ),
    "health professor": dict(
        profession=0,
        weight=0.25,
        degree=(
            "a PhD in {field}",
            "an MD",
            "a master's degree in public health",
            "a doctorate in {field}",
            "a bachelor's degree in biology",
            "a PhD",
        ),
        exp_area=(
            "clinical research",
            "health care",
            "{field}",
            "teaching and research",
            "{topic}",
        ),
        workplace=("{univ}",),
        workplace2=("{univ3}", "{hospital}"),
        interests=("research interests", "interests", "clinical interests"),
        assoc=(
            "American Public Health Association",
            "American Heart Association",
            "Gerontological Society of America",
            "American Association for the Advancement of Science",
            "Academy of Nutrition and Dietetics",
        ),
        award=(
            "a young investigator award",
            "a research award from the National Institutes of Health",
            "the university's teaching award",
            "a best paper award",
        ),
        committee=(
            "curriculum committee",
            "research ethics board",
            "faculty senate",
            "patient safety committee",
        ),
        trainees=("medical students and residents", "graduate students", "doctoral students"),
        people=("students", "patients and students", "students and colleagues"),
        teaching=(
            "{course}[ and {course2}]",
            "<graduate|undergraduate> courses in {course}",
            "medical students and residents",
        ),
        role=(
            "{His} research <focuses on|examines|explores> {topic}[ and {topic2}].",
            "{S} has published <widely|extensively|more than {n_pub} articles> on {topic}.",
            "{His} work has been <funded|supported> by {agency}[ and {agency2}].",
            "{S} <also sees patients|sees patients|practices> at {hospital}.",
            "{S} leads <a clinical trial|several studies|a large study> on {topic}[ funded by "
            "{agency}].",
            "{S} <serves|has served> as <an editor|an associate editor|a reviewer> for {journal}.",
        ),
    ),
    "hospital nurse": dict(
        profession=1,
        weight=0.55,
        degree=(
            "a bachelor's degree in nursing",
            "an associate degree in nursing",
            "a bachelor's degree in biology",
            "a bachelor's degree",
            "an associate degree",
        ),
        exp_area=("{specialty} care", "patient care", "health care", "{topic}"),
        workplace=("{hospital}",),
        workplace2=("{hospital2}",),
        interests=("interests", "clinical interests", "professional interests"),
        assoc=(
            "American Nurses Association",
            "Oncology Nursing Society",
            "American Heart Association",
            "Gerontological Society of America",
            "American Red Cross",
        ),
        award=(
            "the DAISY Award",
            "the hospital's <employee|caregiver> of the year award",
            "a patient care award",
            "a regional award for clinical excellence",
        ),
        committee=(
            "patient safety committee",
            "infection control committee",
            "quality improvement committee",
            "ethics committee",
        ),
        trainees=("new staff", "nursing students", "new hires on the {unit}"),
        people=("patients and their families", "{patients}"),
        teaching=(
            "CPR classes[ for the community]",
            "childbirth classes[ at {hospital}]",
            "classes on {care_topic} for patients",
            "first aid[ on weekends]",
        ),
        role=(
            "{S} <cares for|looks after|works with> {patients}[ on the {unit}].",
            "{S} <works|usually works> <night|day|weekend|twelve-hour> shifts[ <on|in> the "
            "{unit}].",
            "{S} is certified in {cert}[ and {cert2}].",
            "{S} has worked in {setting} and {setting2}.",
            "{S} <teaches|educates> patients and families about {care_topic}.",
            "{S} is affiliated with {hospital}[ and {hospital2}].",
            "{S} has spent most of {his} career <on|in> the {unit}[ at {hospital}].",
        ),
    ),
    "nurse practitioner": dict(
        profession=1,
        weight=0.35,
        degree=(
            "a master's degree in nursing",
            "an MSN",
            "a Doctor of Nursing Practice degree",
            "a master's degree",
            "a bachelor's degree in biology",
        ),
        exp_area=("primary care", "health care", "family medicine", "{topic}"),
        workplace=("{clinic}",),
        workplace2=("{hospital}",),
        interests=("clinical interests", "interests", "special interests"),
        assoc=(
            "American Association of Nurse Practitioners",
            "American Public Health Association",
            "American Heart Association",
            "American Diabetes Association",
        ),
        award=(
            "a patient care award",
            "a regional award for clinical excellence",
            "a community service award",
        ),
        committee=("quality improvement committee", "ethics committee", "patient safety committee"),
        trainees=("nursing students", "medical assistants", "new staff"),
        people=("patients of all ages", "patients and their families", "{patients}"),
        teaching=(
            "classes on {care_topic}[ for patients]",
            "health education classes[ in {city}]",
            "students in the clinic",
        ),
        role=(
            "{S} sees patients of all ages[ at {workplace}].",
            "{S} provides <primary care|preventive care|women's health care|care for chronic "
            "conditions>[ in {city}].",
            "{S} is affiliated with {hospital}[ and {hospital2}].",
            "{S} is board certified in <family practice|adult health|women's health|pediatrics>.",
            "{S} accepts <most major insurance plans|Medicare and most insurance plans>.",
            "{S} works closely with <physicians|doctors and specialists> to <manage|treat> "
            "{topic}.",
        ),
    ),
    "nurse educator": dict(
        profession=1,
        weight=0.1,
        degree=(
            "a PhD in nursing",
            "a master's degree in nursing",
            "a doctorate in public health",
            "a PhD",
            "a master's degree",
        ),
        exp_area=("nursing education", "health care", "teaching and research", "{specialty} care"),
        workplace=("{univ}", "the school of nursing at {univ}"),
        workplace2=("{hospital}",),
        interests=("research interests", "interests"),
        assoc=(
            "Sigma Theta Tau International honor society",
            "American Public Health Association",
            "Gerontological Society of America",
            "American Nurses Association",
        ),
        award=(
            "the university's teaching award",
            "a research award from a national society",
            "a community service award",
        ),
        committee=(
            "curriculum committee",
            "faculty senate",
            "research ethics board",
            "patient safety committee",
        ),
        trainees=("nursing students", "graduate students", "new faculty"),
        people=("students", "patients and students"),
        teaching=(
            "{course}[ and {course2}]",
            "<undergraduate|graduate> courses in {course}",
            "students in the clinic",
        ),
        role=(
            "{His} research <focuses on|examines|explores> {topic}[ and {topic2}].",
            "{S} has published <articles|several articles|papers> on {topic}[ in {journal}].",
            "{S} <teaches|coordinates> <clinical|simulation> courses[ at {workplace}].",
            "{S} still <works|picks up shifts> <in|on> the {unit} at {hospital}[ on weekends].",
            "{S} worked for {years} years in {setting} before moving into teaching.",
            "{His} work has been <funded|supported> by {agency}.",
        ),
    ),
}
"""Kinds of professor and nurse: ``profession``, ``weight`` (share within the profession) and
the persona's slot templates and role sentences (the ones that lean to a profession)."""


_TOKEN = re.compile(r"\{(\w+)\}|\[|\]|<|>|\|")


@functools.cache
def _parse(template: str) -> tuple:
    """A template as a tree: str, ("slot", name), ("opt", seq), ("alt", (seq, ...))."""

    def seq(i: int, stop: str) -> tuple[tuple, int, str]:
        out: list = []
        alts: list[tuple] = []
        pos = i
        while pos < len(template):
            m = _TOKEN.search(template, pos)
            if m is None:
                out.append(template[pos:])
                pos = len(template)
                break
            if m.start() > pos:
                out.append(template[pos : m.start()])
            token, pos = m.group(0), m.end()
            if m.group(1):
                out.append(("slot", m.group(1)))
            elif token == "[":
                inner, pos, _ = seq(pos, "]")
                out.append(("opt", inner))
            elif token == "<":
                inner, pos, _ = seq(pos, ">")
                out.append(inner)
            elif token == "|" and stop == ">":
                alts.append(tuple(out))
                out = []
            elif token == stop:
                break
            else:
                raise ValueError(f"unbalanced {token!r} in template {template!r}")
        if stop == ">":
            return ("alt", (*alts, tuple(out))), pos, stop
        return tuple(out), pos, stop

    tree, pos, _ = seq(0, "")
    assert pos == len(template)
    return tree


def _expand(tree, fill, rng: random.Random) -> str:
    if isinstance(tree, str):
        return tree
    if tree and tree[0] == "slot":
        return fill(tree[1])
    if tree and tree[0] == "opt":
        return _expand(tree[1], fill, rng) if rng.random() < 0.5 else ""
    if tree and tree[0] == "alt":
        return _expand(rng.choice(tree[1]), fill, rng)
    return "".join(_expand(node, fill, rng) for node in tree)


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU](?!ni|se|u))")


def _pick(rng: random.Random, options: tuple[str, ...], k: int = 1) -> list[str]:
    """``k`` distinct options, or all of them repeated when there are fewer than ``k``."""
    return rng.sample(options, k) if len(options) >= k else [*options, *options][:k]


def _bio(rng: random.Random, female: bool, nurse: bool) -> str:
    """One biography in the manner of Bias in Bios' ``hard_text``: no occupation sentence,
    3-8 sentences (role, shared, personal and rarely a title sentence), 30-110 words."""
    names = [p for p, spec in PERSONAS.items() if spec["profession"] == int(nurse)]
    persona = PERSONAS[rng.choices(names, weights=[PERSONAS[p]["weight"] for p in names])[0]]
    first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
    last = rng.choice(SURNAMES)
    he, his, him = ("she", "her", "her") if female else ("he", "his", "him")
    univ, univ2, univ3 = rng.sample(UNIVERSITIES, 3)
    city, city2 = rng.sample(CITIES, 2)
    specialty, unit, patients, care = rng.choice(SPECIALTIES)
    hospital, hospital2 = rng.sample(HOSPITALS, 2)
    values = {
        "first": first,
        "he": he,
        "his": his,
        "him": him,
        "He": he.capitalize(),
        "His": his.capitalize(),
        "univ": univ,
        "univ2": univ2,
        "univ3": univ3,
        "city": city,
        "city2": city2,
        "specialty": specialty,
        "unit": unit,
        "patients": patients,
        "hospital": hospital,
        "hospital2": hospital2,
        "clinic": rng.choice(CLINICS),
        "care_topic": rng.choice(care if rng.random() < 0.6 else CARE_TOPICS),
        "year": str(rng.randint(1995, 2021)),
        "year2": str(rng.randint(1985, 2022)),
        "years": str(rng.randint(3, 30)),
        "n_small": rng.choice(["two", "three", "four", "five", "six", "seven"]),
        "n_pub": str(rng.choice([20, 30, 40, 50, 60, 80, 100, 120, 150, 200])),
        "press": rng.choice(PRESSES),
        "journal": rng.choice(JOURNALS),
        "kids": rng.choice(KIDS),
        "family": rng.choice(FAMILY),
        "parent": "mother" if female else "father",
    }
    for key, pool in [
        ("agency", AGENCIES),
        ("cert", CERTIFICATIONS),
        ("hobby", HOBBIES),
        ("lang", LANGUAGES),
        ("setting", SETTINGS),
    ]:
        values[key], values[key + "2"] = rng.sample(pool, 2)
    r = rng.random()
    spouses = ("husband", "wife") if female else ("wife", "husband")
    values["spouse"] = spouses[0] if r < 0.85 else "partner" if r < 0.95 else spouses[1]
    if persona is PERSONAS["academic"]:
        field, _, topics, courses, methods = rng.choice(FIELDS)
        values["method"] = rng.choice(methods)
    elif persona["profession"] == 0:
        field, courses = rng.choice(HEALTH_FIELDS)
        topics = HEALTH_TOPICS
    else:
        field, courses = "nursing", NURSING_COURSES
        topics = HEALTH_TOPICS if rng.random() < 0.6 else (*care, *CARE_TOPICS)
    values["field"] = field
    values["topic"], values["topic2"] = rng.sample(topics, 2)
    values["course"], values["course2"] = _pick(rng, courses, 2)

    def fill(name: str) -> str:
        if name in ("S", "s"):
            return subject(name == "S")
        if name not in values:  # a persona slot: expanded once, when first used
            slot = name if name in persona else name.removesuffix("2")
            a, b = _pick(rng, persona[slot], 2)
            values[slot] = _expand(_parse(a), fill, rng)
            if slot + "2" not in persona:  # e.g. workplace2 is a slot of its own
                values[slot + "2"] = _expand(_parse(b), fill, rng)
        return values[name]

    if not nurse:  # one honorific per biography
        honorific = "Professor" if rng.random() < 0.05 else "Dr."
    elif persona is not PERSONAS["hospital nurse"] and rng.random() < 0.5:
        honorific = "Dr."
    else:
        honorific = ("Ms." if rng.random() < 0.7 else "Mrs.") if female else "Mr."

    def subject(capital: bool) -> str:
        r = rng.random()
        if r < 0.65:
            return he.capitalize() if capital else he
        if r < 0.80:
            return first
        if r < 0.92:
            return f"{honorific} {last}"
        return f"{first} {last}"

    while True:
        k = rng.choices([3, 4, 5, 6, 7, 8], weights=[1, 2, 4, 4, 3, 1])[0]
        n_role = min(rng.choices([1, 2, 3], weights=[8, 9, 3])[0], k - 1)
        n_personal = min(rng.choices([0, 1, 2], weights=[5, 9, 6])[0], k - n_role - 1)
        work = _pick(rng, persona["role"], n_role)
        work += rng.sample(SHARED_BODY, k - n_role - n_personal)
        if rng.random() < 0.04:
            work[-1] = rng.choice(NURSE_TITLE if nurse else PROFESSOR_TITLE)
        rng.shuffle(work)
        chosen = work + rng.sample(PERSONAL_BODY, n_personal)
        if rng.random() < 0.2:
            rng.shuffle(chosen)
        text = _ARTICLE.sub(r"\1n ", " ".join(_expand(_parse(t), fill, rng) for t in chosen))
        if 30 <= len(text.split()) <= 110:
            return text


@functools.cache
def _offline_group(group: str) -> tuple[str, ...]:
    """All distinct generated bios of one group: train first, then test, then validation."""
    gender, profession = group.split()
    rng = random.Random(f"sfc_plugin.bias_in_bios/{group}/v2")
    total = sum(OFFLINE_SIZES.values())
    seen: dict[str, None] = {}
    while len(seen) < total:
        seen.setdefault(_bio(rng, gender == "female", profession == "nurse"))
    return tuple(seen)


_GENERATION_ORDER: tuple[Part, ...] = ("train", "test", "validation")


def _offline(part: Part) -> pd.DataFrame:
    rows = []
    start = sum(OFFLINE_SIZES[p] for p in _GENERATION_ORDER[: _GENERATION_ORDER.index(part)])
    for group in GROUPS:
        gender, profession = group.split()
        texts = _offline_group(group)[start : start + OFFLINE_SIZES[part]]
        rows += [(t, int(profession == "nurse"), int(gender == "female")) for t in texts]
    return pd.DataFrame(rows, columns=["text", "profession", "gender"])


# ---------------------------------------------------------------------------------------------
# Hub and local files (hub schema)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _from_hub_schema(records: list[dict], where: str, row_word: str = "row") -> pd.DataFrame:
    """Hub-schema records (``hard_text``, ``profession``, ``gender``) -> our columns, other
    professions dropped. ``where`` names the file in errors; rows are numbered from 1."""
    rows = []
    for i, record in enumerate(records, start=1):
        for field in HUB_FIELDS:
            if field not in record:
                raise ValueError(f"{where}: {row_word} {i} has no field {field!r}")
        text, profession, gender = (record[f] for f in HUB_FIELDS)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: {row_word} {i}: hard_text must be a non-empty string")
        if not _is_int(profession):
            raise ValueError(f"{where}: {row_word} {i}: profession {profession!r} is not an int")
        if not _is_int(gender) or gender not in (0, 1):
            raise ValueError(f"{where}: {row_word} {i}: gender {gender!r} is not 0 or 1")
        if int(profession) in HUB_PROFESSIONS:
            rows.append((text, HUB_PROFESSIONS[int(profession)], int(gender)))
    return pd.DataFrame(rows, columns=["text", "profession", "gender"])


def _read_file(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        for field in HUB_FIELDS:
            if field not in frame.columns:
                raise ValueError(f"{path}: no field {field!r} (columns: {list(frame.columns)})")
        return _from_hub_schema(frame[list(HUB_FIELDS)].to_dict("records"), str(path))
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not JSON: {e}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {line_no} is not a JSON object")
            records.append(record)
    return _from_hub_schema(records, str(path))


def _path(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix not in (".parquet", ".jsonl"):
        raise ValueError(
            f"unknown source {str(source)!r}: choose one of {SOURCES}, a .parquet or .jsonl "
            'path, or {"train": path, "validation": path, "test": path}'
        )
    return path


def _load(source: Source, part: Part) -> pd.DataFrame:
    if isinstance(source, str) and source == "offline":
        return _offline(part)
    if isinstance(source, str) and source == "hub":
        import datasets  # lazy: only this source needs it (and the network)

        hub = datasets.load_dataset(HUB_NAME, split=HUB_SPLITS[part])
        records = hub.to_pandas().to_dict("records")  # type: ignore[union-attr]
        return _from_hub_schema(records, f"{HUB_NAME}:{part}")
    if isinstance(source, Mapping):
        unknown = set(source) - set(PARTS)
        if unknown:
            raise ValueError(f"source keys must be parts {PARTS}, got {sorted(unknown)}")
        if part not in source:
            raise ValueError(f"source has no file for part {part!r} (keys: {sorted(source)})")
        return _read_file(_path(source[part]))
    return _read_file(_path(source))


# ---------------------------------------------------------------------------------------------


def bias_in_bios(
    split: str,
    part: str = "train",
    *,
    source: Source = "offline",
    n: int | None = None,
    seed: int = 42,
) -> pd.DataFrame:
    """Biographies of professors and nurses for SHIFT.

    Returns a DataFrame (index 0..rows-1) with columns ``text`` (str), ``profession`` (int:
    0 = professor, 1 = nurse), ``gender`` (int: 0 = male, 1 = female) and ``group`` (str, one
    of ``GROUPS``).

    - ``split``: ``"ambiguous"`` (male professors and female nurses: profession == gender),
      ``"balanced"`` (all four groups) or one group name (``"female professor"``, ...). The
      groups of a split are truncated to equal counts and the rows shuffled with ``seed``.
    - ``part``: ``"train"``, ``"validation"`` (for design choices and tuning) or ``"test"``
      (disjoint texts).
    - ``source``: ``"offline"`` (generated here: 2,000 bios per group in train, 250 in
      validation, 500 in test; the texts do not depend on ``seed``, which only subsamples and
      shuffles), ``"hub"`` (``LabHC/bias_in_bios`` via ``datasets``, validation = its "dev"
      split; needs the network), a ``.parquet``/``.jsonl`` path in the hub schema (used for
      whichever ``part`` is asked) or a dict from parts to such paths.
    - ``n``: at most this many rows, rounded down to a multiple of the number of groups.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {tuple(SPLITS)}")
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: choose one of {PARTS}")
    groups = SPLITS[split]
    if n is not None:
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be a positive int or None, got {n!r}")
        if n < len(groups):
            raise ValueError(f"n={n} is fewer than the {len(groups)} groups of split {split!r}")
    frame = _load(source, part)  # type: ignore[arg-type]
    frame["group"] = [
        f"{'female' if g else 'male'} {'nurse' if p else 'professor'}"
        for g, p in zip(frame["gender"], frame["profession"])
    ]
    indices = {group: list(frame.index[frame["group"] == group]) for group in groups}
    empty = [group for group, rows in indices.items() if not rows]
    if empty:
        raise ValueError(f"source {source!r} ({part}) has no rows of group(s) {empty}")
    count = min(len(rows) for rows in indices.values())
    if n is not None:
        count = min(count, n // len(groups))
    keep = []
    for group, rows in indices.items():
        random.Random(f"{seed}/{group}").shuffle(rows)
        keep += rows[:count]
    random.Random(seed).shuffle(keep)
    out = frame.loc[keep].reset_index(drop=True)
    return out.astype({"profession": "int64", "gender": "int64"})
